//! `hub-pull REPO [--revision R] [--allow PAT]... [--ignore PAT]... [--quiet]`:
//! pulls a repo into the cache with settings from the environment
//! (`HF_ENDPOINT`, `HF_HUB_CACHE`, …) and prints the snapshot folder.
//! A bare tool for tests and benches; users have `mlxengine pull`.

use std::process::ExitCode;

use engine_hub::{progress_line, FileFilter, HubClient, RateMeter, RepoId};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub-pull: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut repo, mut revision, mut quiet) = (None, "main".to_string(), false);
    let mut filter = FileFilter::all();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--revision" => revision = args.next().ok_or("--revision needs a value")?,
            "--allow" => filter.allow.push(args.next().ok_or("--allow needs a pattern")?),
            "--ignore" => filter.ignore.push(args.next().ok_or("--ignore needs a pattern")?),
            "--quiet" => quiet = true,
            s if s.starts_with('-') => return Err(format!("unknown option {s}").into()),
            s => repo = Some(RepoId::parse(s)?),
        }
    }
    let repo = repo.ok_or("usage: hub-pull REPO [--revision R] [--allow PAT]... [--ignore PAT]... [--quiet]")?;
    let client = HubClient::from_env()?;
    let mut meter = RateMeter::default();
    let mut last = std::time::Instant::now();
    let snap = client.pull(&repo, &revision, &filter, &mut |p| {
        let rate = meter.update(p.total_bytes);
        if !quiet && last.elapsed().as_millis() >= 500 {
            eprintln!("{}", progress_line(p, rate));
            last = std::time::Instant::now();
        }
    })?;
    println!("{}", snap.path.display());
    Ok(())
}
