//! `test-hub ROOT [options]`: serves a folder of `org/name/` repos as a
//! Hugging Face–compatible hub on 127.0.0.1 and prints its URL on the first
//! line of stdout. For CLI tests and benches; stops when killed.
//!
//! Options: `--port P`, `--lfs-threshold BYTES`, `--token T` (required
//! token), and faults: `--drop-at BYTE --drop-times K`, `--corrupt-at BYTE
//! --corrupt-times K`, `--status-429 K --retry-after S`, `--status-500 K`,
//! `--trickle BYTES_PER_SEC`, `--extra-name NAME` (repeatable),
//! `--only-file NAME`.

use std::io::Write;
use std::process::ExitCode;

use engine_hub::test_hub::{Faults, TestHub};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-hub: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut root = None;
    let mut faults = Faults::default();
    let mut port = 0u16;
    let mut lfs_threshold = None;
    let mut token = None;
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{name}: `{v}` is not a number"))
        }
        match a.as_str() {
            "--port" => port = num("--port", val("--port")?)?,
            "--lfs-threshold" => lfs_threshold = Some(num::<u64>("--lfs-threshold", val("--lfs-threshold")?)?),
            "--token" => token = Some(val("--token")?),
            "--drop-at" => faults.drop_at = Some(num("--drop-at", val("--drop-at")?)?),
            "--drop-times" => faults.drop_times = num("--drop-times", val("--drop-times")?)?,
            "--corrupt-at" => faults.corrupt_at = Some(num("--corrupt-at", val("--corrupt-at")?)?),
            "--corrupt-times" => faults.corrupt_times = num("--corrupt-times", val("--corrupt-times")?)?,
            "--status-429" => faults.status_429_times = num("--status-429", val("--status-429")?)?,
            "--retry-after" => faults.retry_after_secs = num("--retry-after", val("--retry-after")?)?,
            "--status-500" => faults.status_500_times = num("--status-500", val("--status-500")?)?,
            "--trickle" => faults.trickle_bytes_per_sec = Some(num("--trickle", val("--trickle")?)?),
            "--extra-name" => faults.extra_names.push(val("--extra-name")?),
            "--only-file" => faults.only_file = Some(val("--only-file")?),
            "-h" | "--help" => {
                println!("usage: test-hub ROOT [--port P] [--lfs-threshold B] [--token T] [--drop-at B --drop-times K] [--corrupt-at B --corrupt-times K] [--status-429 K --retry-after S] [--status-500 K] [--trickle BPS] [--extra-name NAME]... [--only-file NAME]");
                return Ok(());
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}; see --help")),
            s => root = Some(s.to_string()),
        }
    }
    let root = root.ok_or("missing ROOT folder (holding org/name/ repos); see --help")?;
    if !std::path::Path::new(&root).is_dir() {
        return Err(format!("{root} is not a folder"));
    }
    let mut b = TestHub::builder(&root).port(port);
    if let Some(t) = lfs_threshold {
        b = b.lfs_threshold(t);
    }
    if let Some(t) = token {
        b = b.require_token(t);
    }
    let hub = b
        .start()
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    hub.set_faults(faults);
    println!("{}", hub.url());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    loop {
        std::thread::park();
    }
}
