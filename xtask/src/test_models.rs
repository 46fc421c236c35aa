//! `cargo xtask test-models`: the one command that fetches the real models
//! and the parity fixtures, then runs every integration test target of every
//! modality crate, and prints one table row per target.
//!
//! Test targets are discovered, not listed: every `crates/<crate>/tests/*.rs`
//! of a crate in [`MODALITIES`] is run as `cargo test -p <crate> --test
//! <name>`, so a new parity test (or a new modality's crate, once it is in
//! the table) is picked up by itself. The crates that hold no model code
//! (bindings, hub, device, the CLI) have their own suites and are not run.
//!
//! Options: `--skip-fetch` (use what is in target/ as is), `--refresh-fixtures`
//! (regenerate the parity fixtures even when present), `--release`, and words
//! that pick targets (`cargo xtask test-models vlm llm/parity`: targets whose
//! `crate/target` or modality contains one of them).

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Crates whose integration tests exercise a model modality, and its name.
const MODALITIES: &[(&str, &str)] = &[
    ("engine-core", "tokenizer"),
    ("engine-llm", "llm"),
    ("engine-embed", "embedding"),
    ("engine-vlm", "vlm"),
    ("engine-diffusion", "diffusion"),
];

/// One test target and how its run went.
struct Outcome {
    krate: String,
    target: String,
    modality: &'static str,
    passed: u64,
    failed: u64,
    ignored: u64,
    seconds: f64,
    /// Why the target failed without failing checks (a build error, a crash).
    broken: Option<String>,
    output: String,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.failed == 0 && self.broken.is_none()
    }
}

/// `(crate, test target, modality)` for every `tests/*.rs` of the modality crates, sorted.
fn discover(root: &Path) -> Result<Vec<(String, String, &'static str)>> {
    let mut found = Vec::new();
    for &(krate, modality) in MODALITIES {
        let dir = root.join("crates").join(krate);
        if !dir.join("Cargo.toml").is_file() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(dir.join("tests")) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "rs"))
            .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        found.extend(names.into_iter().map(|n| (krate.to_string(), n, modality)));
    }
    Ok(found)
}

/// Sums libtest's `test result: ... N passed; M failed; K ignored` lines.
fn parse_counts(output: &str) -> Option<(u64, u64, u64)> {
    let mut sums = None;
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        let (p, f, i) = sums.get_or_insert((0, 0, 0));
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => *p += n,
                "failed" => *f += n,
                "ignored" => *i += n,
                _ => {}
            }
        }
    }
    sums
}

fn cargo_test(root: &Path, krate: &str, targets: &[&str], release: bool, no_run: bool) -> Result<(bool, String)> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args(["test", "-p", krate]);
    if release {
        cmd.arg("--release");
    }
    for t in targets {
        cmd.args(["--test", t]);
    }
    if no_run {
        cmd.arg("--no-run");
    } else {
        cmd.arg("--no-fail-fast");
    }
    let out = cmd.output().context("running cargo test")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

/// Whether the parity fixtures are in place: a checkpoint with its
/// `expected.json` under target/parity, and target/vlm-pixels/expected.json.
fn fixtures_present(root: &Path) -> bool {
    let parity = root.join("target/parity");
    let any_checkpoint = std::fs::read_dir(&parity)
        .map(|rd| rd.flatten().any(|e| e.path().join("expected.json").is_file()))
        .unwrap_or(false);
    any_checkpoint && root.join("target/vlm-pixels/expected.json").is_file()
}

/// What to show of a failed run: each panic with its message (no
/// backtraces), else the output's last lines (a build error).
fn failure_excerpt(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    let mut shown = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            shown.push(*line);
            let message = lines[i + 1..]
                .iter()
                .take_while(|l| !l.trim().is_empty() && !l.contains("stack backtrace") && !l.starts_with("   0:"))
                .take(8);
            shown.extend(message);
        }
    }
    if shown.is_empty() {
        shown = lines[lines.len().saturating_sub(40)..].to_vec();
    }
    shown.join("\n")
}

fn print_table(outcomes: &[Outcome]) {
    let width = outcomes
        .iter()
        .map(|o| o.krate.len() + 1 + o.target.len())
        .max()
        .unwrap_or(0)
        .max("test target".len());
    println!(
        "{:width$}  {:10}  {:>6}  {:>6}  {:>7}  {:>8}  result",
        "test target", "modality", "passed", "failed", "ignored", "time"
    );
    for o in outcomes {
        let result = match &o.broken {
            Some(why) => why.as_str(),
            None if o.failed > 0 => "FAILED",
            None => "ok",
        };
        println!(
            "{:width$}  {:10}  {:>6}  {:>6}  {:>7}  {:>7.1}s  {result}",
            format!("{}/{}", o.krate, o.target),
            o.modality,
            o.passed,
            o.failed,
            o.ignored,
            o.seconds
        );
    }
    let total = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let seconds: f64 = outcomes.iter().map(|o| o.seconds).sum();
    println!(
        "{:width$}  {:10}  {:>6}  {:>6}  {:>7}  {:>7.1}s",
        "total",
        "",
        total(|o| o.passed),
        total(|o| o.failed),
        total(|o| o.ignored),
        seconds
    );
}

/// Runs the command; see the module documentation.
pub fn run(args: &[String]) -> Result<()> {
    let mut skip_fetch = false;
    let mut refresh = false;
    let mut release = false;
    let mut picks: Vec<&str> = Vec::new();
    for a in args {
        match a.as_str() {
            "--skip-fetch" => skip_fetch = true,
            "--refresh-fixtures" => refresh = true,
            "--release" => release = true,
            other if other.starts_with('-') => {
                bail!("unknown option {other}; options: --skip-fetch, --refresh-fixtures, --release, then target words")
            }
            word => picks.push(word),
        }
    }
    let root = crate::root();
    if !skip_fetch {
        crate::fetch_models().context("fetching the real models (cargo xtask fetch-models)")?;
        if refresh || !fixtures_present(&root) {
            eprintln!("making the parity fixtures (cargo xtask parity-fixtures) ...");
            crate::parity_fixtures().context("making the parity fixtures (cargo xtask parity-fixtures)")?;
        }
    }
    let mut targets = discover(&root)?;
    if !picks.is_empty() {
        targets.retain(|(k, t, m)| {
            let name = format!("{}/{t}", k.trim_start_matches("engine-"));
            picks
                .iter()
                .any(|p| name.contains(p) || format!("engine-{name}").contains(p) || m.contains(p))
        });
    }
    if targets.is_empty() {
        bail!("no test targets found under crates/*/tests/ (or none matches {picks:?})");
    }

    let mut outcomes = Vec::new();
    let mut crates: Vec<&str> = targets.iter().map(|(k, _, _)| k.as_str()).collect();
    crates.dedup();
    for krate in crates {
        let mine: Vec<&(String, String, &'static str)> = targets.iter().filter(|(k, _, _)| k == krate).collect();
        let names: Vec<&str> = mine.iter().map(|(_, t, _)| t.as_str()).collect();
        // Build first, so a row's time is its run, not the crate's compile.
        eprintln!("building {krate}'s tests: {}", names.join(", "));
        let (built, build_log) = cargo_test(&root, krate, &names, release, true)?;
        for (k, t, modality) in mine {
            let mut o = Outcome {
                krate: k.clone(),
                target: t.clone(),
                modality,
                passed: 0,
                failed: 0,
                ignored: 0,
                seconds: 0.0,
                broken: None,
                output: String::new(),
            };
            if !built {
                o.broken = Some("build failed".into());
                o.output = build_log.clone();
                outcomes.push(o);
                continue;
            }
            eprintln!("running {k}/{t} ...");
            let start = Instant::now();
            let (success, output) = cargo_test(&root, k, &[t.as_str()], release, false)?;
            o.seconds = start.elapsed().as_secs_f64();
            match parse_counts(&output) {
                Some((p, f, i)) => (o.passed, o.failed, o.ignored) = (p, f, i),
                None => o.broken = Some("no test results (crashed?)".into()),
            }
            if !success && o.failed == 0 && o.broken.is_none() {
                o.broken = Some("cargo test failed".into());
            }
            o.output = output;
            outcomes.push(o);
        }
    }

    for o in outcomes.iter().filter(|o| !o.ok()) {
        let excerpt = failure_excerpt(&o.output);
        eprintln!("\n==== {}/{} ({}) ====\n{excerpt}", o.krate, o.target, o.modality);
    }
    println!();
    print_table(&outcomes);
    let bad: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| format!("{}/{}", o.krate, o.target))
        .collect();
    if !bad.is_empty() {
        bail!(
            "{} of {} test targets failed: {}",
            bad.len(),
            outcomes.len(),
            bad.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_over_result_lines() {
        let out = "running 2 tests\n\
                   test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s\n\
                   test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s\n";
        assert_eq!(parse_counts(out), Some((5, 2, 1)));
        assert_eq!(parse_counts("error: could not compile"), None);
    }

    #[test]
    fn excerpts_keep_panics_and_drop_backtraces() {
        let out = "running 1 test\nthread 'a' panicked at tests/x.rs:3:5:\nboom\nstack backtrace:\n   0: f\n";
        assert_eq!(failure_excerpt(out), "thread 'a' panicked at tests/x.rs:3:5:\nboom");
        let build = "error[E0425]: x\nerror: could not compile";
        assert_eq!(failure_excerpt(build), build);
    }

    #[test]
    fn discovers_the_parity_targets() {
        let found = discover(&crate::root()).unwrap();
        let has = |k: &str, t: &str| found.iter().any(|(kk, tt, _)| kk == k && tt == t);
        assert!(
            has("engine-llm", "parity") && has("engine-embed", "real_model"),
            "{:?}",
            found.len()
        );
        assert!(has("engine-core", "tokenizer_parity") && has("engine-vlm", "llava_parity"));
        assert!(!found.iter().any(|(k, _, _)| k == "engine-hub" || k == "mlxengine"));
    }
}
