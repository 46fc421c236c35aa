//! MLX distributed over the ring backend on loopback: two real processes
//! (this test binary re-run with `MLX_RANK` / `MLX_HOSTFILE` set, as
//! `mlx.launch` sets them) exchange arrays.

use engine_mlx::distributed::{self, Group};
use engine_mlx::{Array, Dtype};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Set in the child processes: which test body to run as a rank.
const CHILD: &str = "ENGINE_MLX_DIST_CHILD";

/// Runs this test binary's test `name` as `n` ranks of a ring on loopback
/// and returns each rank's stdout; fails if a rank fails or the whole run
/// takes over a minute (a hang).
fn run_ranks(name: &str, n: usize) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let exits = distributed::launch_local(n, dir.path(), Some(Duration::from_secs(60)), |_| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    })
    .unwrap();
    exits
        .into_iter()
        .enumerate()
        .map(|(rank, e)| {
            assert!(
                e.status.is_some_and(|s| s.success()),
                "rank {rank} failed ({:?}): {}\n{}",
                e.status,
                e.stderr,
                e.stdout
            );
            e.stdout
        })
        .collect()
}

/// What a rank printed after `key=` (libtest may start the line with the test's name).
fn field(stdout: &str, key: &str) -> String {
    let tag = format!("{key}=");
    stdout
        .lines()
        .find_map(|l| l.find(&tag).map(|i| &l[i + tag.len()..]))
        .unwrap_or_else(|| panic!("no {key}= in:\n{stdout}"))
        .to_string()
}

fn rank_body(g: &Group) {
    let r = g.rank() as f32;
    let x = Array::from_slice(&[r + 1.0, 10.0 * (r + 1.0), -r], &[3]).unwrap();
    let sum: Vec<f32> = g.all_sum(&x).unwrap().to_vec().unwrap();
    println!("sum={sum:?}");
    let gathered = g.all_gather(&Array::from_slice(&[r, r], &[1, 2]).unwrap()).unwrap();
    println!("gather={:?} {:?}", gathered.shape(), gathered.to_vec::<f32>().unwrap());
    if g.rank() == 0 {
        let sent = g.send(&Array::from_slice(&[7i32, 8, 9], &[3]).unwrap(), 1).unwrap();
        sent.eval().unwrap();
        println!("p2p=sent");
    } else {
        let got: Vec<i32> = g.recv(&[3], Dtype::Int32, 0).unwrap().to_vec().unwrap();
        println!("p2p={got:?}");
    }
    assert!(g.send(&x, g.rank()).is_err(), "sending to oneself is refused");
}

/// Two ranks: all_sum, all_gather and send/recv give what they mean.
#[test]
fn ring_collectives_over_two_processes() {
    if std::env::var_os(CHILD).is_some() {
        let g = distributed::init("ring").unwrap();
        println!("rank={} size={}", g.rank(), g.size());
        rank_body(&g);
        return;
    }
    let out = run_ranks("ring_collectives_over_two_processes", 2);
    for (rank, o) in out.iter().enumerate() {
        assert_eq!(field(o, "rank"), format!("{rank} size=2"), "{o}");
        assert_eq!(field(o, "sum"), "[3.0, 30.0, -1.0]", "{o}");
        assert_eq!(field(o, "gather"), "[2, 2] [0.0, 0.0, 1.0, 1.0]", "{o}");
    }
    assert_eq!(field(&out[0], "p2p"), "sent");
    assert_eq!(field(&out[1], "p2p"), "[7, 8, 9]");
}

/// A group cannot be joined without its environment, with an unknown
/// backend or with an unreadable hostfile: each is an error naming it, at once.
#[test]
fn bad_setups_are_clear_errors() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let e = distributed::init("carrier-pigeon").unwrap_err().to_string();
    assert!(e.contains("unknown distributed backend"), "{e}");
    // A child process, so the environment is its own.
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "bad_setups_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .env_remove("MLX_RANK")
            .env_remove("MLX_HOSTFILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let o = run(&[]);
    assert!(field(&o, "error").contains("MLX_RANK"), "{o}");
    let o = run(&[("MLX_RANK", "0"), ("MLX_HOSTFILE", "/nonexistent/hosts.json")]);
    assert!(
        field(&o, "error").contains("/nonexistent/hosts.json cannot be read"),
        "{o}"
    );
}

/// The child half of `bad_setups_are_clear_errors`.
#[test]
fn bad_setups_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    match distributed::init("ring") {
        Ok(g) => println!("error=none (joined a group of {})", g.size()),
        Err(e) => println!("error={e}"),
    }
}

/// A rank whose peer dies does not hang: the launcher kills it once the
/// peer fails, and says which rank failed.
#[test]
fn a_dead_peer_ends_the_run() {
    if std::env::var_os(CHILD).is_some() {
        let g = distributed::init("ring").unwrap();
        if g.rank() == 1 {
            std::process::exit(3);
        }
        // Rank 0 waits on a sum its peer never joins.
        let x = Array::from_slice(&[1.0f32], &[1]).unwrap();
        // MLX's ring gives up on a closed peer after a few retries: an error,
        // which a real rank reports and exits on (the launcher may kill it first).
        match g.all_sum(&x).and_then(|s| s.to_vec::<f32>()) {
            Err(e) => {
                println!("error={e}");
                std::process::exit(4);
            }
            Ok(v) => {
                println!("error=rank 0 finished a sum without its peer: {v:?}");
                std::process::exit(5);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let exits = distributed::launch_local(2, dir.path(), Some(Duration::from_secs(60)), |_| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "a_dead_peer_ends_the_run", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    })
    .unwrap();
    assert_eq!(exits[1].status.and_then(|s| s.code()), Some(3), "{exits:?}");
    assert!(exits[0].status.is_none_or(|s| !s.success()), "{exits:?}");
    assert_ne!(exits[0].status.and_then(|s| s.code()), Some(5), "{exits:?}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "took {:?}",
        started.elapsed()
    );
}
