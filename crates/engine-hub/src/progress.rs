//! Progress reporting and cancellation. The library only reports through a
//! callback; formatting helpers are here so every front end shows the same.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared flag that stops a pull at the next chunk. The partial file is
/// flushed and kept as `blobs/<hash>.incomplete`, so the next pull resumes.
/// The CLI sets it from its SIGINT handler.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A new, unset flag.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks every operation holding a clone of this flag to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// True once [`CancelFlag::cancel`] was called (and not reset).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// Clears the flag so the client can be used again.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What a pull is doing for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The file is already in the cache; nothing is downloaded.
    Cached,
    /// Another process holds the file's lock; waiting for it.
    WaitingForLock,
    /// Bytes are flowing. `resumed_from` > 0 when a partial file was reused.
    Downloading {
        /// Bytes taken from an earlier partial download.
        resumed_from: u64,
    },
    /// A request failed; the next attempt starts after `delay`.
    Retrying {
        /// Attempt that failed (1-based).
        attempt: u32,
        /// Wait before the next attempt.
        delay: Duration,
        /// Why it failed.
        reason: String,
    },
    /// Checking the sha256 or size.
    Verifying,
    /// The file is verified and visible in the snapshot.
    Done,
}

/// One progress report.
#[derive(Debug, Clone)]
pub struct Progress {
    /// File name in the repo.
    pub file: String,
    /// 0-based index of the file in this pull.
    pub file_index: usize,
    /// Number of files in this pull.
    pub file_count: usize,
    /// Bytes of this file on disk so far (resumed bytes included).
    pub file_bytes: u64,
    /// Size of this file.
    pub file_size: u64,
    /// Bytes of the whole pull done so far (cached files included).
    pub total_bytes: u64,
    /// Size of the whole pull.
    pub total_size: u64,
    /// Current phase.
    pub phase: Phase,
}

/// Formats a byte count with binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Formats a duration as `42s`, `3m05s` or `1h02m`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

/// Speed and ETA over a sliding window of recent samples.
#[derive(Debug, Clone)]
pub struct RateMeter {
    samples: std::collections::VecDeque<(Instant, u64)>,
    window: Duration,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self::new(Duration::from_secs(5))
    }
}

impl RateMeter {
    /// A meter averaging over `window`.
    pub fn new(window: Duration) -> Self {
        RateMeter {
            samples: Default::default(),
            window,
        }
    }

    /// Records that `done` bytes are done now; returns bytes per second.
    pub fn update(&mut self, done: u64) -> f64 {
        self.update_at(Instant::now(), done)
    }

    /// As [`RateMeter::update`], at a given instant.
    pub fn update_at(&mut self, now: Instant, done: u64) -> f64 {
        // A counter going backwards (new file, restart) starts a new window.
        if self.samples.back().is_some_and(|&(_, d)| d > done) {
            self.samples.clear();
        }
        self.samples.push_back((now, done));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|&(t, _)| now.duration_since(t) > self.window)
        {
            self.samples.pop_front();
        }
        self.rate()
    }

    /// Bytes per second over the window (0 until two samples exist).
    pub fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, d0)), Some(&(t1, d1))) if t1 > t0 => (d1 - d0) as f64 / (t1 - t0).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// Time left for `remaining` bytes at the current rate.
    pub fn eta(&self, remaining: u64) -> Option<Duration> {
        let r = self.rate();
        (r > 0.0).then(|| Duration::from_secs_f64(remaining as f64 / r))
    }
}

/// One status line: `name  120.0 MiB / 512.0 MiB  23%  85.2 MiB/s  ETA 4s`.
pub fn progress_line(p: &Progress, bytes_per_sec: f64) -> String {
    let pct = (p.file_bytes * 100).checked_div(p.file_size).unwrap_or(100);
    let mut line = format!(
        "{}  {} / {}  {pct}%",
        p.file,
        format_bytes(p.file_bytes),
        format_bytes(p.file_size)
    );
    match &p.phase {
        Phase::Downloading { .. } if bytes_per_sec > 0.0 => {
            let eta = Duration::from_secs_f64(p.file_size.saturating_sub(p.file_bytes) as f64 / bytes_per_sec);
            line.push_str(&format!(
                "  {}/s  ETA {}",
                format_bytes(bytes_per_sec as u64),
                format_duration(eta)
            ));
        }
        Phase::Downloading { .. } => {}
        Phase::Cached => line.push_str("  cached"),
        Phase::WaitingForLock => line.push_str("  waiting for another download"),
        Phase::Retrying { attempt, delay, reason } => {
            line.push_str(&format!("  retry {attempt} in {}: {reason}", format_duration(*delay)))
        }
        Phase::Verifying => line.push_str("  verifying"),
        Phase::Done => line.push_str("  done"),
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_durations() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(512 << 20), "512.0 MiB");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn rate_and_eta() {
        let mut m = RateMeter::new(Duration::from_secs(5));
        let t0 = Instant::now();
        m.update_at(t0, 0);
        let r = m.update_at(t0 + Duration::from_secs(2), 2_000_000);
        assert!((r - 1_000_000.0).abs() < 1.0);
        assert_eq!(m.eta(3_000_000), Some(Duration::from_secs(3)));
        m.update_at(t0 + Duration::from_secs(3), 10);
        assert_eq!(m.rate(), 0.0);
    }

    #[test]
    fn cancel_flag_is_shared() {
        let a = CancelFlag::new();
        let b = a.clone();
        b.cancel();
        assert!(a.is_cancelled());
        a.reset();
        assert!(!b.is_cancelled());
    }
}
