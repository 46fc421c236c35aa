//! Tensor and pipeline parallelism over MLX distributed: every parity
//! fixture (each architecture, dense and MLX 4-bit, and the GGUF one) split
//! across two real ranks of a ring on loopback — by heads and by layers —
//! computes the logits the whole model computes in one process (within
//! 1e-4) and the same greedy tokens, alone and in a batch. A rank loading its
//! share holds only that share, never the whole model, and engine-device's
//! per-rank estimate of it holds.

mod common;

use engine_device::{RankSplit, SplitKind};
use engine_llm::{DtypePolicy, LlmModel, LoadOptions, Split, SplitMode};
use engine_mlx::{distributed, memory};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// Set in the rank processes.
const CHILD: &str = "ENGINE_LLM_TP_CHILD";

fn fixtures() -> Vec<PathBuf> {
    let dir = std::env::var_os("MLXENGINE_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/parity"));
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask parity-fixtures`", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

fn prompt_of(dir: &std::path::Path) -> Vec<u32> {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    expected["prompt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Runs `test` of this binary as `n` ranks on loopback (each sees `CHILD`),
/// stopping them all after `timeout_s`.
fn run_ranks(n: usize, test: &str, timeout_s: u64) -> Vec<distributed::RankExit> {
    let dir = tempfile::tempdir().unwrap();
    distributed::launch_local(n, dir.path(), Some(Duration::from_secs(timeout_s)), |_| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    })
    .unwrap()
}

/// Loads the dense Llama fixture split each way and prints this rank's
/// resident bytes, load peak, share and the per-rank estimate of its weights,
/// then the whole model's weight bytes.
fn memory_lines(group: &Arc<distributed::Group>) {
    let dir = fixtures().into_iter().find(|d| d.ends_with("llama")).unwrap();
    let path = common::checkpoint(&dir);
    let load = |split: Option<Split>| {
        memory::clear_cache();
        memory::reset_peak();
        let base = memory::active();
        let opts = LoadOptions {
            dtype: DtypePolicy::Native,
            split,
            ..Default::default()
        };
        let m = LlmModel::load(&path, &opts, &mut |_| {}).unwrap();
        let (resident, peak) = (memory::active() - base, memory::peak() - base);
        (m, resident, peak)
    };
    let (whole, _, _) = load(None);
    let t = whole.transformer();
    let arch = common::arch_of(t);
    let whole_bytes = t.weight_bytes();
    drop(whole);
    for (mode, kind) in [
        (SplitMode::Tensor, SplitKind::Tensor),
        (SplitMode::Pipeline, SplitKind::Pipeline),
    ] {
        let split = Split {
            group: group.clone(),
            mode,
        };
        let (m, resident, peak) = load(Some(split));
        let share = m.transformer().weight_bytes();
        let planned = RankSplit {
            ranks: group.size() as u64,
            mode: kind,
        };
        // The fixture is f32: 4 bytes per parameter.
        let estimate = (whole_bytes as f64 * arch.rank_share(whole_bytes as u64 / 4, planned)) as usize;
        println!(
            "memory={mode:?} resident={resident} peak={peak} share={share} estimate={estimate} whole={whole_bytes}"
        );
    }
}

/// One rank: for every fixture, the whole model and this rank's share.
fn rank_body() {
    let group = Arc::new(distributed::init("ring").unwrap());
    memory_lines(&group);
    let first = common::checkpoint(&fixtures()[0]);
    let refused = LlmModel::load(
        &first,
        &LoadOptions {
            split: Some(Split {
                group: group.clone(),
                mode: SplitMode::Tensor,
            }),
            adapters: vec![PathBuf::from("/nonexistent/adapter")],
            ..Default::default()
        },
        &mut |_| {},
    );
    match refused {
        Err(e) => println!("adapters={}", e.to_string().contains("fuse them first")),
        Ok(_) => println!("adapters=accepted"),
    }
    for dir in fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let path = common::checkpoint(&dir);
        let whole = LlmModel::load(
            &path,
            &LoadOptions {
                dtype: DtypePolicy::Native,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
        for mode in [SplitMode::Tensor, SplitMode::Pipeline] {
            let split = LlmModel::load(
                &path,
                &LoadOptions {
                    dtype: DtypePolicy::Native,
                    split: Some(Split {
                        group: group.clone(),
                        mode,
                    }),
                    ..Default::default()
                },
                &mut |_| {},
            )
            .unwrap_or_else(|e| panic!("{name} {mode:?}: {e}"));
            let prompt = prompt_of(&dir);
            let a = whole.logits(&prompt).unwrap().to_f32_vec().unwrap();
            let b = split.logits(&prompt).unwrap().to_f32_vec().unwrap();
            assert_eq!(a.len(), b.len(), "{name}");
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            let short: Vec<u32> = prompt.iter().copied().take(3).collect();
            let prompts = vec![prompt.clone(), short];
            let want = whole.generate_batch(&prompts[..1], 8).unwrap();
            let got = split.generate_batch(&prompts[..1], 8).unwrap();
            let want_batch = whole.generate_batch(&prompts, 8).unwrap();
            let got_batch = split.generate_batch(&prompts, 8).unwrap();
            println!(
                "fixture={name}/{mode:?} worst={worst:e} same_tokens={} same_batch={} tokens={:?}",
                want == got,
                want_batch == got_batch,
                got[0]
            );
        }
    }
}

#[test]
fn every_fixture_split_two_ways_across_two_ranks_matches_one_process() {
    if std::env::var_os(CHILD).is_some() {
        rank_body();
        return;
    }
    let exits = run_ranks(
        2,
        "every_fixture_split_two_ways_across_two_ranks_matches_one_process",
        300,
    );
    let n = fixtures().len();
    assert!(n >= 19, "only {n} parity fixtures: run `cargo xtask parity-fixtures`");
    for (rank, e) in exits.iter().enumerate() {
        assert!(
            e.status.is_some_and(|s| s.success()),
            "rank {rank} failed ({:?}):\n{}\n{}",
            e.status,
            e.stderr,
            e.stdout
        );
        assert!(
            e.stdout.contains("adapters=true"),
            "rank {rank}: a LoRA adapter on a split model is not refused clearly:\n{}",
            e.stdout
        );
        let lines: Vec<&str> = e.stdout.lines().filter(|l| l.contains("fixture=")).collect();
        assert_eq!(
            lines.len(),
            2 * n,
            "rank {rank} checked {} of {n} fixtures × 2 ways:\n{}",
            lines.len(),
            e.stdout
        );
        for l in lines {
            let field = |k: &str| {
                let tag = format!("{k}=");
                let i = l.find(&tag).unwrap() + tag.len();
                l[i..].split(' ').next().unwrap().to_string()
            };
            let worst: f32 = field("worst").parse().unwrap();
            assert!(worst < 1e-4, "rank {rank}: {l}");
            assert_eq!(field("same_tokens"), "true", "rank {rank}: {l}");
            assert_eq!(field("same_batch"), "true", "rank {rank}: {l}");
        }
    }
    // Each rank holds its share after loading (MLX's slices are views of the
    // whole weight: kept as they are, every rank would hold the whole model)
    // and never the whole model while loading; the estimate matches the share.
    for (rank, e) in exits.iter().enumerate() {
        // (The harness prints the test's name on the line of its first output.)
        let lines: Vec<&str> = e
            .stdout
            .lines()
            .filter_map(|l| l.find("memory=").map(|i| &l[i..]))
            .collect();
        assert_eq!(lines.len(), 2, "rank {rank}:\n{}", e.stdout);
        for l in lines {
            let field = |k: &str| -> f64 {
                let tag = format!("{k}=");
                let i = l.find(&tag).unwrap() + tag.len();
                l[i..].split(' ').next().unwrap().parse().unwrap()
            };
            let (resident, peak, share, estimate, whole) = (
                field("resident"),
                field("peak"),
                field("share"),
                field("estimate"),
                field("whole"),
            );
            assert!(share < 0.8 * whole, "rank {rank}: {l}");
            assert!(
                resident <= share * 1.05 + 4096.0,
                "rank {rank} holds more than its share: {l}"
            );
            assert!(peak < whole, "rank {rank} held the whole model while loading: {l}");
            assert!((estimate / share - 1.0).abs() < 0.05, "rank {rank}: estimate off: {l}");
        }
    }
    // Both ranks produced the same tokens.
    let tokens = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains("fixture="))
            .map(|l| l[l.find("tokens=").unwrap()..].to_string())
            .collect()
    };
    assert_eq!(tokens(&exits[0].stdout), tokens(&exits[1].stdout));
}

/// One of four ranks: the Llama fixtures (2 key/value heads) split by heads,
/// so ranks share a replicated key/value head in pairs.
fn replicated_kv_body() {
    let group = Arc::new(distributed::init("ring").unwrap());
    for dir in fixtures()
        .into_iter()
        .filter(|d| d.ends_with("llama") || d.ends_with("llama-4bit"))
    {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let path = common::checkpoint(&dir);
        let native = |split| LoadOptions {
            dtype: DtypePolicy::Native,
            split,
            ..Default::default()
        };
        let whole = LlmModel::load(&path, &native(None), &mut |_| {}).unwrap();
        let split = LlmModel::load(
            &path,
            &native(Some(Split {
                group: group.clone(),
                mode: SplitMode::Tensor,
            })),
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let prompt = prompt_of(&dir);
        let a = whole.logits(&prompt).unwrap().to_f32_vec().unwrap();
        let b = split.logits(&prompt).unwrap().to_f32_vec().unwrap();
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let same = whole.generate_batch(std::slice::from_ref(&prompt), 8).unwrap()
            == split.generate_batch(&[prompt], 8).unwrap();
        println!("kv={name} worst={worst:e} same_tokens={same}");
    }
}

#[test]
fn four_ranks_share_replicated_key_value_heads() {
    if std::env::var_os(CHILD).is_some() {
        replicated_kv_body();
        return;
    }
    let exits = run_ranks(4, "four_ranks_share_replicated_key_value_heads", 120);
    for (rank, e) in exits.iter().enumerate() {
        assert!(
            e.status.is_some_and(|s| s.success()),
            "rank {rank} failed ({:?}):\n{}\n{}",
            e.status,
            e.stderr,
            e.stdout
        );
        let lines: Vec<&str> = e
            .stdout
            .lines()
            .filter_map(|l| l.find("kv=").map(|i| &l[i..]))
            .collect();
        assert_eq!(lines.len(), 2, "rank {rank}:\n{}", e.stdout);
        for l in lines {
            let worst: f32 = l
                .split("worst=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(worst < 1e-4 && l.ends_with("same_tokens=true"), "rank {rank}: {l}");
        }
    }
}
