//! MLX distributed: a group of processes (ranks) that exchange arrays, over
//! MLX's own backends — `ring` (TCP, any machine), `nccl` (CUDA), `mpi`,
//! `jaccl` (Thunderbolt Macs) or `any`.
//!
//! A process joins with [`init`]; which rank it is and where its peers are
//! come from MLX's environment conventions (`MLX_RANK`, `MLX_HOSTFILE` for
//! the ring: a JSON list with one `["host:port", ...]` list per rank), as
//! `mlx.launch` sets them. Communication ops are lazy like any other op: they
//! run when their result is evaluated, and every rank must evaluate the same
//! ops in the same order.

use crate::array::{dims, wrap, Array};
use crate::dtype::Dtype;
use crate::error::{Context, Error, Result};
use crate::ffi;
use cxx::UniquePtr;

/// The backends MLX can communicate over.
pub const BACKENDS: &[&str] = &["ring", "nccl", "mpi", "jaccl", "any"];

/// A group of communicating processes. `Send` and `Sync`: MLX's group is an
/// immutable handle, and ops on it are scheduled like any other op.
pub struct Group {
    inner: UniquePtr<ffi::Group>,
}

// SAFETY: the C++ group is a shared pointer to a backend that MLX itself
// drives from its stream threads; the handle is never mutated after init.
unsafe impl Send for Group {}
// SAFETY: see above; every method takes `&self` and only reads the handle.
unsafe impl Sync for Group {}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .finish()
    }
}

/// Whether this build of MLX has `backend` (one of [`BACKENDS`]).
pub fn is_available(backend: &str) -> bool {
    ffi::distributed_available(backend)
}

/// Joins the group of all processes started together, over `backend`.
/// Strict: a backend that is missing or cannot connect (no `MLX_HOSTFILE`,
/// a peer that never comes up) is an error naming it, never a silent group
/// of one.
pub fn init(backend: &str) -> Result<Group> {
    if !BACKENDS.contains(&backend) {
        return Err(Error::Invalid(format!(
            "unknown distributed backend `{backend}`; use one of {}",
            BACKENDS.join(", ")
        )));
    }
    if !is_available(backend) {
        return Err(Error::Invalid(format!(
            "this build of MLX has no `{backend}` distributed backend"
        )));
    }
    if backend == "ring" {
        if let Some(file) = std::env::var_os("MLX_HOSTFILE") {
            let path = std::path::Path::new(&file);
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() && m.len() > 0 => {}
                Ok(_) => {
                    return Err(Error::Invalid(format!(
                        "MLX_HOSTFILE {} is empty or not a file: it must be a JSON list of [\"host:port\", ...] lists, one per rank",
                        path.display()
                    )))
                }
                Err(e) => {
                    return Err(Error::Invalid(format!(
                        "MLX_HOSTFILE {} cannot be read: {e}",
                        path.display()
                    )))
                }
            }
        }
    }
    ffi::distributed_init(backend)
        .map(|inner| Group { inner })
        .map_err(|e| {
            let env = |k: &str| std::env::var(k).unwrap_or_else(|_| "unset".into());
            Error::Invalid(format!(
                "cannot join the `{backend}` group (MLX_RANK {}, MLX_HOSTFILE {}): {}",
                env("MLX_RANK"),
                env("MLX_HOSTFILE"),
                e.what()
            ))
        })
}

impl Group {
    /// This process's rank, `0..size()`.
    pub fn rank(&self) -> usize {
        ffi::group_rank(&self.inner) as usize
    }

    /// How many processes the group holds.
    pub fn size(&self) -> usize {
        ffi::group_size(&self.inner) as usize
    }

    /// Splits the group: ranks passing the same `color` form one subgroup,
    /// ordered by `key` (`None`: by their rank here).
    pub fn split(&self, color: i32, key: Option<i32>) -> Result<Group> {
        ffi::group_split(&self.inner, color, key.unwrap_or(-1))
            .op("group split")
            .map(|inner| Group { inner })
    }

    /// The element-wise sum of `a` over all ranks (every rank gets it).
    pub fn all_sum(&self, a: &Array) -> Result<Array> {
        wrap(ffi::dist_all_sum(&a.inner, &self.inner), "all_sum")
    }

    /// Every rank's `a` concatenated along the first axis, in rank order.
    pub fn all_gather(&self, a: &Array) -> Result<Array> {
        wrap(ffi::dist_all_gather(&a.inner, &self.inner), "all_gather")
    }

    /// Sends `a` to rank `dst`; evaluate the returned array to send.
    pub fn send(&self, a: &Array, dst: usize) -> Result<Array> {
        wrap(ffi::dist_send(&a.inner, self.peer(dst)?, &self.inner), "send")
    }

    /// Receives an array of `shape` and `dtype` from rank `src`.
    pub fn recv(&self, shape: &[usize], dtype: Dtype, src: usize) -> Result<Array> {
        wrap(
            ffi::dist_recv(&dims(shape)?, dtype as u8, self.peer(src)?, &self.inner),
            "recv",
        )
    }

    fn peer(&self, r: usize) -> Result<i32> {
        if r >= self.size() || r == self.rank() {
            return Err(Error::Invalid(format!(
                "rank {r} is not a peer of rank {} in a group of {}",
                self.rank(),
                self.size()
            )));
        }
        Ok(r as i32)
    }
}

/// What one rank of [`launch_local`] left behind.
#[derive(Debug)]
pub struct RankExit {
    /// Its exit status (`None`: killed because another rank failed or time ran out).
    pub status: Option<std::process::ExitStatus>,
    /// What it wrote to stdout, when that was piped.
    pub stdout: String,
    /// What it wrote to stderr, when that was piped.
    pub stderr: String,
}

/// Runs `n` ranks on this machine over the ring backend on loopback, the
/// way `mlx.launch` does: writes a hostfile of free loopback ports to
/// `dir/hosts.json` ([`loopback_hostfile`]) and runs `command(rank)` for
/// every rank ([`run_ranks`]).
pub fn launch_local(
    n: usize,
    dir: &std::path::Path,
    timeout: Option<std::time::Duration>,
    command: impl Fn(usize) -> std::process::Command,
) -> std::io::Result<Vec<RankExit>> {
    let hostfile = loopback_hostfile(n, dir)?;
    run_ranks(n, &hostfile, timeout, command)
}

/// A free port on `ip` of this machine (bound and dropped at once: MLX
/// binds it again a moment later).
pub fn free_port(ip: &str) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Writes the ring backend's hostfile for `n` ranks on loopback, one free
/// port each (`[["127.0.0.1:PORT"], ...]`), to `dir/hosts.json`.
pub fn loopback_hostfile(n: usize, dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let mut hosts = Vec::with_capacity(n);
    for _ in 0..n {
        hosts.push(vec![format!("127.0.0.1:{}", free_port("127.0.0.1")?)]);
    }
    let hostfile = dir.join("hosts.json");
    std::fs::write(&hostfile, ring_hostfile(&hosts))?;
    Ok(hostfile)
}

/// The ring backend's `MLX_HOSTFILE` text: for each rank, the `ip:port`
/// addresses it listens on.
pub fn ring_hostfile(ranks: &[Vec<String>]) -> String {
    let rank = |r: &Vec<String>| {
        let addrs: Vec<String> = r.iter().map(|a| format!("\"{a}\"")).collect();
        format!("[{}]", addrs.join(", "))
    };
    format!("[{}]", ranks.iter().map(rank).collect::<Vec<_>>().join(", "))
}

/// How long the other ranks may run on once rank 0 has ended before they
/// are stopped (they normally end with it: a `run` finishes together, a
/// `serve` tells its followers to stop).
pub const AFTER_RANK_0: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts `command(rank)` for each of `n` ranks with `MLX_RANK` and
/// `MLX_HOSTFILE` (= `hostfile`) set, and waits for all. When one rank
/// fails, or `timeout` passes, the others are killed (a rank blocked on a
/// dead peer never hangs the run); when rank 0 ends, the others get
/// [`AFTER_RANK_0`] to end too. Piped stdout/stderr are collected.
pub fn run_ranks(
    n: usize,
    hostfile: &std::path::Path,
    timeout: Option<std::time::Duration>,
    command: impl Fn(usize) -> std::process::Command,
) -> std::io::Result<Vec<RankExit>> {
    use std::io::Read;
    let mut children = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = command(rank);
        cmd.env("MLX_RANK", rank.to_string()).env("MLX_HOSTFILE", hostfile);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                for (c, _, _) in &mut children {
                    let c: &mut std::process::Child = c;
                    let _ = c.kill();
                }
                return Err(e);
            }
        };
        let drain = |r: Option<Box<dyn Read + Send>>| {
            r.map(|mut r| {
                std::thread::spawn(move || {
                    let mut s = Vec::new();
                    let _ = r.read_to_end(&mut s);
                    String::from_utf8_lossy(&s).into_owned()
                })
            })
        };
        let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
        children.push((child, out, err));
    }
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let mut status: Vec<Option<std::process::ExitStatus>> = vec![None; n];
    let mut rank0_done: Option<std::time::Instant> = None;
    loop {
        for (i, (c, _, _)) in children.iter_mut().enumerate() {
            if status[i].is_none() {
                status[i] = c.try_wait()?;
            }
        }
        let failed = status.iter().flatten().any(|s| !s.success());
        if status[0].is_some() {
            rank0_done.get_or_insert_with(std::time::Instant::now);
        }
        let late = deadline.is_some_and(|d| std::time::Instant::now() > d)
            || rank0_done.is_some_and(|t| t.elapsed() > AFTER_RANK_0);
        if status.iter().all(Option::is_some) {
            break;
        }
        if failed || late {
            for (i, (c, _, _)) in children.iter_mut().enumerate() {
                if status[i].is_none() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(children
        .into_iter()
        .zip(status)
        .map(|((_, out, err), status)| RankExit {
            status,
            stdout: out.and_then(|h| h.join().ok()).unwrap_or_default(),
            stderr: err.and_then(|h| h.join().ok()).unwrap_or_default(),
        })
        .collect())
}
