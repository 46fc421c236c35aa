//! Downloading one blob: locked, resumable, verified, atomic.
//!
//! 1. If `blobs/<hash>` exists with the right size, it is reused.
//! 2. An exclusive advisory lock on `.locks/<repo>/<hash>.lock` is taken, so
//!    two processes never write the same blob; the loser of the race finds
//!    the blob finished when it gets the lock.
//! 3. Bytes go to `blobs/<hash>.incomplete`. An existing partial file is
//!    resumed with `Range: bytes=<len>-` (a server answering 200 restarts it).
//! 4. The sha256 (LFS files) is computed while streaming, the prefix of a
//!    resumed file first; non-LFS files are checked by size. A mismatch
//!    deletes the partial file and downloads again.
//! 5. Only then is it renamed to `blobs/<hash>`; the snapshot link comes after.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fs4::fs_std::FileExt;
use sha2::{Digest, Sha256};

use crate::cache::RepoCache;
use crate::error::{HubError, Result};
use crate::http::{header, Ctx, Failure, Http};
use crate::progress::Phase;

/// Chunk size for socket reads and file writes.
const CHUNK: usize = 1 << 20;
/// Least time between two `Downloading` reports.
const REPORT_EVERY: Duration = Duration::from_millis(100);

/// One blob to fetch.
pub(crate) struct BlobJob {
    /// `…/resolve/<commit>/<file>` URL.
    pub url: String,
    /// Name in the repo (for messages).
    pub file: String,
    /// Blob name in the cache.
    pub hash: String,
    /// Expected size.
    pub size: u64,
    /// Expected sha256 (LFS files).
    pub sha256: Option<String>,
    /// Error context.
    pub ctx: Ctx,
}

fn blob_ok(path: &std::path::Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Fetches `job` into `rc`'s blobs; `report(phase, bytes_of_this_file)`.
pub(crate) fn fetch_blob(
    http: &Http,
    rc: &RepoCache,
    job: &BlobJob,
    report: &mut dyn FnMut(Phase, u64),
) -> Result<PathBuf> {
    let blob = rc.blob(&job.hash);
    if blob_ok(&blob, job.size) {
        report(Phase::Cached, job.size);
        return Ok(blob);
    }
    for dir in [rc.blobs(), rc.locks.clone()] {
        fs::create_dir_all(&dir).map_err(|e| HubError::io(&dir, e))?;
    }
    let lock_path = rc.lock(&job.hash);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| HubError::io(&lock_path, e))?;
    if !lock.try_lock_exclusive().map_err(|e| HubError::io(&lock_path, e))? {
        tracing::info!(file = %job.file, "another process is downloading this file; waiting");
        report(Phase::WaitingForLock, 0);
        // Polled rather than blocking so a cancel is honoured while waiting.
        loop {
            if http.cancel.is_cancelled() {
                return Err(HubError::Cancelled { partial: None });
            }
            std::thread::sleep(Duration::from_millis(100));
            if lock.try_lock_exclusive().map_err(|e| HubError::io(&lock_path, e))? {
                break;
            }
        }
    }
    // The lock is released when `lock` is dropped (closing the file), on every path.
    if blob_ok(&blob, job.size) {
        report(Phase::Cached, job.size);
        return Ok(blob);
    }
    if blob.exists() {
        tracing::warn!(path = %blob.display(), "cached blob has the wrong size; downloading it again");
        fs::remove_file(&blob).map_err(|e| HubError::io(&blob, e))?;
    }
    let partial = rc.incomplete(&job.hash);
    // Both the attempt and the retry notice report progress.
    let report = std::cell::RefCell::new(report);
    let current = std::cell::Cell::new(0u64);
    http.with_retry(
        |_| attempt(http, job, &partial, &current, &mut *report.borrow_mut()),
        |attempt, delay, err| {
            (report.borrow_mut())(
                Phase::Retrying {
                    attempt,
                    delay,
                    reason: err.to_string(),
                },
                current.get(),
            )
        },
    )?;
    fs::rename(&partial, &blob).map_err(|e| HubError::io(&blob, e))?;
    drop(lock);
    Ok(blob)
}

fn io_fatal(path: &std::path::Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Fatal(HubError::io(path, e))
}

/// One attempt; leaves a verified, complete `.incomplete` file on success.
fn attempt(
    http: &Http,
    job: &BlobJob,
    partial: &std::path::Path,
    current: &std::cell::Cell<u64>,
    report: &mut dyn FnMut(Phase, u64),
) -> Result<(), Failure> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(partial)
        .map_err(io_fatal(partial))?;
    let mut have = f.metadata().map_err(io_fatal(partial))?.len();
    if have > job.size {
        f.set_len(0).map_err(io_fatal(partial))?;
        have = 0;
    }
    current.set(have);
    let start_have = have;
    let mut resp = None;
    if have < job.size {
        let r = http.send("GET", &job.url, Some(have), &job.ctx)?;
        match r.status().as_u16() {
            206 => {
                let start = header(&r, "content-range")
                    .and_then(|c| c.strip_prefix("bytes "))
                    .and_then(|c| c.split('-').next())
                    .and_then(|s| s.trim().parse::<u64>().ok());
                if start != Some(have) {
                    f.set_len(0).map_err(io_fatal(partial))?;
                    return Err(Failure::Retry {
                        error: HubError::BadResponse {
                            url: job.url.clone(),
                            detail: format!(
                                "asked for bytes from {have}, got Content-Range {:?}",
                                header(&r, "content-range")
                            ),
                        },
                        after: None,
                    });
                }
            }
            _ if have > 0 => {
                tracing::info!(file = %job.file, "server ignored the Range header; restarting the file");
                f.set_len(0).map_err(io_fatal(partial))?;
                have = 0;
            }
            _ => {}
        }
        resp = Some(r);
    }
    let mut hasher = job.sha256.as_ref().map(|_| Sha256::new());
    let mut buf = vec![0u8; CHUNK];
    if let Some(h) = hasher.as_mut() {
        // A resumed file's prefix is hashed from disk: the digest covers every byte.
        f.seek(SeekFrom::Start(0)).map_err(io_fatal(partial))?;
        let mut left = have;
        while left > 0 {
            let n = f
                .read(&mut buf[..CHUNK.min(left as usize)])
                .map_err(io_fatal(partial))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
    }
    f.seek(SeekFrom::Start(have)).map_err(io_fatal(partial))?;
    // Only when there is something to cut: on ext4 a truncate arms
    // auto_da_alloc, which makes the final close flush the whole file to disk
    // (0.14 s per 512 MiB, a quarter of a pull from a fast mirror).
    if f.metadata().map_err(io_fatal(partial))?.len() != have {
        f.set_len(have).map_err(io_fatal(partial))?;
    }
    if let Some(r) = resp {
        report(Phase::Downloading { resumed_from: have }, have);
        let mut body = r.into_body().into_reader();
        let mut last_report = Instant::now();
        let mut pipe = match hasher.take() {
            Some(h) => Some(HashPipe::new(h).map_err(io_fatal(partial))?),
            None => None,
        };
        loop {
            let mut chunk = match pipe.as_mut() {
                Some(p) => p.buffer(),
                None => std::mem::take(&mut buf),
            };
            // Fill a large buffer before writing: fewer syscalls, bigger hash updates.
            let mut filled = 0;
            let mut eof = false;
            let mut read_err = None;
            // ...but on a slow link return early, so progress and cancel stay responsive.
            let fill_start = Instant::now();
            while filled < CHUNK && !http.cancel.is_cancelled() && (filled == 0 || fill_start.elapsed() < REPORT_EVERY)
            {
                match body.read(&mut chunk[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        read_err = Some(e);
                        break;
                    }
                }
            }
            if have + filled as u64 > job.size {
                f.set_len(0).map_err(io_fatal(partial))?;
                return Err(Failure::Retry {
                    error: HubError::BadResponse {
                        url: job.url.clone(),
                        detail: format!("the server sent more than the expected {} bytes", job.size),
                    },
                    after: None,
                });
            }
            // Bytes that arrived before an error are kept: the next attempt resumes after them.
            f.write_all(&chunk[..filled]).map_err(io_fatal(partial))?;
            match pipe.as_mut() {
                Some(p) => p.submit(chunk, filled),
                None => buf = chunk,
            }
            have += filled as u64;
            current.set(have);
            if http.cancel.is_cancelled() {
                f.flush().map_err(io_fatal(partial))?;
                return Err(Failure::Fatal(HubError::Cancelled {
                    partial: Some(partial.to_path_buf()),
                }));
            }
            if last_report.elapsed() >= REPORT_EVERY {
                report(
                    Phase::Downloading {
                        resumed_from: start_have,
                    },
                    have,
                );
                last_report = Instant::now();
            }
            if read_err.is_some() || (eof && have < job.size) {
                let why = read_err
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "closed by the server".into());
                let error = HubError::Network {
                    url: job.url.clone(),
                    attempts: 1,
                    message: format!("connection lost at byte {have} of {}: {why}", job.size),
                };
                return Err(if have > start_have {
                    Failure::Resume(error)
                } else {
                    Failure::Retry { error, after: None }
                });
            }
            if eof || have == job.size {
                break;
            }
        }
        report(
            Phase::Downloading {
                resumed_from: start_have,
            },
            have,
        );
        if let Some(p) = pipe {
            hasher = Some(p.finish().ok_or_else(|| {
                Failure::Fatal(HubError::io(
                    partial,
                    std::io::Error::other("the hashing thread failed"),
                ))
            })?);
        }
    }
    f.flush().map_err(io_fatal(partial))?;
    report(Phase::Verifying, have);
    if have != job.size {
        f.set_len(0).map_err(io_fatal(partial))?;
        return Err(Failure::Retry {
            error: HubError::Verification {
                file: job.file.clone(),
                attempts: 1,
                detail: format!("expected {} bytes, got {have}", job.size),
            },
            after: None,
        });
    }
    if let (Some(h), Some(expected)) = (hasher, &job.sha256) {
        let got = hex(&h.finalize());
        if !got.eq_ignore_ascii_case(expected) {
            drop(f);
            fs::remove_file(partial).map_err(io_fatal(partial))?;
            tracing::warn!(file = %job.file, %expected, %got, "sha256 mismatch; downloading again");
            return Err(Failure::Retry {
                error: HubError::Verification {
                    file: job.file.clone(),
                    attempts: 1,
                    detail: format!("sha256 {got} does not match the hub's {expected}"),
                },
                after: None,
            });
        }
    }
    Ok(())
}

/// Hashes chunks on a helper thread so that hashing overlaps socket reads
/// and file writes (a pull then runs at the speed of the slower of the two,
/// not their sum). Buffers circulate between the two threads.
struct HashPipe {
    tx: Option<mpsc::SyncSender<(Vec<u8>, usize)>>,
    free: mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    worker: Option<std::thread::JoinHandle<Sha256>>,
}

impl HashPipe {
    fn new(mut hasher: Sha256) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
        let (free_tx, free) = mpsc::channel();
        let worker = std::thread::Builder::new().name("hub-sha256".into()).spawn(move || {
            for (buf, n) in rx {
                hasher.update(&buf[..n]);
                // The reader may be gone (error path); the buffer is then just dropped.
                let _ = free_tx.send(buf);
            }
            hasher
        })?;
        Ok(HashPipe {
            tx: Some(tx),
            free,
            allocated: 0,
            worker: Some(worker),
        })
    }

    /// A buffer to fill: a returned one, a new one (at most 4), or the next returned.
    fn buffer(&mut self) -> Vec<u8> {
        if let Ok(b) = self.free.try_recv() {
            return b;
        }
        if self.allocated < 4 {
            self.allocated += 1;
            return vec![0u8; CHUNK];
        }
        self.free.recv().unwrap_or_else(|_| vec![0u8; CHUNK])
    }

    fn submit(&mut self, buf: Vec<u8>, n: usize) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((buf, n));
        }
    }

    /// Waits for the worker and returns the hasher; `None` if it died.
    fn finish(mut self) -> Option<Sha256> {
        drop(self.tx.take());
        self.worker.take()?.join().ok()
    }
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &std::path::Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| HubError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| HubError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}
