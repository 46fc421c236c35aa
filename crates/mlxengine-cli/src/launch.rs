//! `mlxengine launch -n N -- run MODEL PROMPT ...`: one command split across
//! N processes (ranks) over MLX distributed, as `mlx.launch` starts them.
//!
//! The ranks run on this machine over the ring backend on loopback (a
//! hostfile of free ports, `MLX_RANK` / `MLX_HOSTFILE` set per rank). Each
//! loads its share of the model — of every layer (`--split tensor`) or a
//! range of layers (`--split pipeline`) — and every rank runs the same
//! generation; rank 0 owns the terminal, the others' output is
//! kept and shown only if they fail. When one rank fails the others are
//! stopped, so a dead rank never leaves the rest waiting. Under `serve`,
//! rank 0 serves HTTP and the others follow its batch scheduler
//! (`mlxengine_server::split`).

use anyhow::{bail, Result};
use clap::Args;
use mlxengine::mlx::distributed;
use std::process::{Command, Stdio};

/// Set in every rank: the backend to join the group over.
pub const BACKEND_ENV: &str = "MLXENGINE_DISTRIBUTED";
/// Set in every rank: how the model is split (`tensor` or `pipeline`).
pub const SPLIT_ENV: &str = "MLXENGINE_SPLIT";
/// Set in every rank: the seed all ranks sample with when none was given.
pub const SEED_ENV: &str = "MLXENGINE_LAUNCH_SEED";

/// Arguments of `mlxengine launch`.
#[derive(Args)]
pub struct LaunchArgs {
    /// Number of processes (ranks) to split the model across.
    #[arg(short = 'n', long, default_value_t = 2)]
    ranks: usize,
    /// MLX distributed backend: ring (TCP on loopback), or nccl / mpi / any.
    #[arg(long, default_value = "ring")]
    backend: String,
    /// How to split the model: `tensor` (every rank holds a share of every
    /// layer) or `pipeline` (every rank holds a range of layers).
    #[arg(long, default_value = "tensor", value_parser = ["tensor", "pipeline"])]
    split: String,
    /// The command every rank runs: `run MODEL PROMPT [options]`, or
    /// `serve --model MODEL [options]` (one text model; rank 0 serves HTTP).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// Starts the ranks and waits for them; the first failure is the error.
pub fn launch(args: LaunchArgs) -> Result<()> {
    if args.ranks < 1 {
        bail!("-n must be at least 1");
    }
    if !distributed::BACKENDS.contains(&args.backend.as_str()) {
        bail!(
            "unknown --backend `{}`; use one of {}",
            args.backend,
            distributed::BACKENDS.join(", ")
        );
    }
    if !distributed::is_available(&args.backend) {
        bail!("this build of MLX has no `{}` distributed backend", args.backend);
    }
    match args.command.first().map(String::as_str) {
        Some("run" | "serve") => {}
        Some(other) => bail!("`launch` runs `run` or `serve` across ranks; `{other}` cannot be split yet"),
        None => bail!(
            "give the command to run across ranks: `mlxengine launch -n 2 -- run MODEL PROMPT` or `-- serve --model MODEL`"
        ),
    }
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let seed = rand_seed();
    let exits = distributed::launch_local(args.ranks, dir.path(), None, |rank| {
        let mut cmd = Command::new(&exe);
        cmd.args(&args.command)
            .env(BACKEND_ENV, &args.backend)
            .env(SPLIT_ENV, &args.split)
            .env(SEED_ENV, seed.to_string())
            .stdin(Stdio::null());
        if rank > 0 {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        }
        stop_with_launcher(&mut cmd);
        cmd
    })?;
    // The rank that failed on its own, not one stopped because of it.
    let failed = exits
        .iter()
        .enumerate()
        .find(|(_, e)| e.status.is_some_and(|s| !s.success()));
    if let Some((rank, e)) = failed {
        let tail: Vec<&str> = e.stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let status = e.status.map(|s| s.to_string()).unwrap_or_default();
        if rank == 0 {
            // Rank 0's own error is already on the terminal.
            bail!("rank 0 failed ({status}); the other ranks were stopped");
        }
        bail!(
            "rank {rank} failed ({status}); the other ranks were stopped:\n{}",
            tail.join("\n")
        );
    }
    Ok(())
}

/// How this process's model is split when `mlxengine launch` started it,
/// else `None`.
pub fn split() -> Result<Option<mlxengine::Split>> {
    let Ok(backend) = std::env::var(BACKEND_ENV) else {
        return Ok(None);
    };
    let mode = match std::env::var(SPLIT_ENV).as_deref() {
        Ok("pipeline") => mlxengine::SplitMode::Pipeline,
        _ => mlxengine::SplitMode::Tensor,
    };
    Ok(Some(mlxengine::Split {
        group: std::sync::Arc::new(distributed::init(&backend)?),
        mode,
    }))
}

/// The seed the ranks share when the command gives none.
pub fn shared_seed() -> Option<u64> {
    std::env::var(SEED_ENV).ok()?.parse().ok()
}

/// A rank started here gets SIGTERM when the launcher dies, however it
/// dies (Linux), so killing `mlxengine launch` never leaves ranks behind: a
/// `serve` rank 0 then shuts down as on Ctrl-C.
fn stop_with_launcher(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
