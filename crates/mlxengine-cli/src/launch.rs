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
    /// Number of processes (ranks) to split the model across (default: 2,
    /// or one per host of --hostfile).
    #[arg(short = 'n', long)]
    ranks: Option<usize>,
    /// Hosts to run the ranks on, as `mlx.launch` reads them: a JSON list
    /// `[{"ssh": "host1", "ips": ["10.0.0.1"]}, ...]` (or `{"hosts": [...]}`),
    /// one rank per host. Hosts that are this machine (localhost, 127.0.0.1,
    /// its hostname) start here; others through `ssh HOST`, running this
    /// binary's path with MLX_RANK / MLX_HOSTFILE set (ring backend only).
    #[arg(long, value_name = "FILE")]
    hostfile: Option<std::path::PathBuf>,
    /// First port the ranks on other hosts listen on (one more per rank and
    /// IP, as mlx.launch); ranks here take free ports.
    #[arg(long, default_value_t = 32323)]
    starting_port: u16,
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
    let hosts = match &args.hostfile {
        Some(file) => Some(read_hostfile(file, args.ranks, &args.backend)?),
        None => None,
    };
    let ranks = hosts.as_ref().map_or(args.ranks.unwrap_or(2), Vec::len);
    if ranks < 1 {
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
    let hostfile = match &hosts {
        None => distributed::loopback_hostfile(ranks, dir.path())?,
        Some(hosts) => {
            let path = dir.path().join("hosts.json");
            std::fs::write(&path, ring_addresses(hosts, args.starting_port)?)?;
            path
        }
    };
    let envs = [
        (BACKEND_ENV, args.backend.clone()),
        (SPLIT_ENV, args.split.clone()),
        (SEED_ENV, seed.to_string()),
    ];
    let exits = distributed::run_ranks(ranks, &hostfile, None, |rank| {
        let remote = hosts.as_ref().and_then(|h| (!h[rank].local).then_some(&h[rank].ssh));
        let mut cmd = match remote {
            Some(host) => ssh_command(host, rank, &hostfile, &exe, &args.command, &envs),
            None => {
                let mut cmd = Command::new(&exe);
                cmd.args(&args.command);
                cmd
            }
        };
        cmd.envs(envs.iter().map(|(k, v)| (*k, v))).stdin(Stdio::null());
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

/// One host of a `--hostfile`.
struct Host {
    ssh: String,
    ips: Vec<String>,
    /// This machine: the rank starts here, not through ssh.
    local: bool,
}

/// Reads mlx.launch's hostfile; every problem names the file and the fix.
fn read_hostfile(file: &std::path::Path, ranks: Option<usize>, backend: &str) -> Result<Vec<Host>> {
    let shape = r#"a JSON list of hosts such as [{"ssh": "host1", "ips": ["10.0.0.1"]}, {"ssh": "host2", "ips": ["10.0.0.2"]}]"#;
    let name = file.display();
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("--hostfile {name} cannot be read ({e}); give {shape}"))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--hostfile {name} is not JSON ({e}); give {shape}"))?;
    let list = match &json {
        serde_json::Value::Array(l) => l,
        serde_json::Value::Object(o) => match o.get("hosts").and_then(|h| h.as_array()) {
            Some(l) => l,
            None => bail!("--hostfile {name} has no \"hosts\" list; give {shape}"),
        },
        _ => bail!("--hostfile {name} is not a list of hosts; give {shape}"),
    };
    if list.is_empty() {
        bail!("--hostfile {name} lists no hosts; give {shape}");
    }
    if let Some(n) = ranks {
        if n != list.len() {
            bail!(
                "-n {n} disagrees with --hostfile {name}, which lists {} hosts (one rank each): leave out -n or list {n} hosts",
                list.len()
            );
        }
    }
    if backend != "ring" {
        bail!("--hostfile starts ranks for the ring backend; use --backend ring (or mlx.launch for `{backend}`)");
    }
    let me = this_hostname();
    list.iter()
        .enumerate()
        .map(|(i, h)| {
            let ssh = h.get("ssh").and_then(|s| s.as_str()).filter(|s| !s.is_empty());
            let Some(ssh) = ssh else {
                bail!("--hostfile {name}: host {i} has no \"ssh\" hostname; give {shape}")
            };
            let ips: Vec<String> = h
                .get("ips")
                .and_then(|l| l.as_array())
                .map(|l| l.iter().filter_map(|ip| ip.as_str().map(String::from)).collect())
                .unwrap_or_default();
            if ips.is_empty() {
                bail!("--hostfile {name}: host {i} ({ssh}) has no \"ips\"; the ring backend needs the addresses it listens on, e.g. \"ips\": [\"10.0.0.1\"]");
            }
            let local = matches!(ssh, "localhost" | "127.0.0.1" | "::1") || me.as_deref() == Some(ssh);
            Ok(Host { ssh: ssh.to_string(), ips, local })
        })
        .collect()
}

/// The ring backend's `MLX_HOSTFILE` for `hosts`: ranks here listen on free
/// ports, ranks elsewhere on `start`, `start + 1`, ...
fn ring_addresses(hosts: &[Host], start: u16) -> Result<String> {
    let mut port = start;
    let mut ranks = Vec::with_capacity(hosts.len());
    for h in hosts {
        let mut addrs = Vec::new();
        for ip in &h.ips {
            let p = if h.local {
                distributed::free_port(ip).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {ip} for host {} here ({e}): list an address of this machine",
                        h.ssh
                    )
                })?
            } else {
                port = port
                    .checked_add(1)
                    .ok_or_else(|| anyhow::anyhow!("--starting-port {start} leaves no ports"))?;
                port - 1
            };
            addrs.push(format!("{ip}:{p}"));
        }
        ranks.push(addrs);
    }
    Ok(distributed::ring_hostfile(&ranks))
}

/// `ssh HOST` running this binary's path for `rank`: the hostfile is written
/// to a temporary file there (as mlx.launch does) and MLX_RANK /
/// MLX_HOSTFILE and the launch variables are set. BatchMode: a host that
/// wants a password fails at once instead of waiting.
fn ssh_command(
    host: &str,
    rank: usize,
    hostfile: &std::path::Path,
    exe: &std::path::Path,
    command: &[String],
    envs: &[(&str, String)],
) -> Command {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let ring = std::fs::read_to_string(hostfile).unwrap_or_default();
    let mut script = format!(
        "f=$(mktemp) && printf '%s' {} > \"$f\" && export MLX_HOSTFILE=\"$f\" MLX_RANK={rank}",
        quote(&ring)
    );
    for (k, v) in envs {
        script.push_str(&format!(" {k}={}", quote(v)));
    }
    if let Ok(dir) = std::env::current_dir() {
        script.push_str(&format!(
            " && {{ cd {} 2>/dev/null || true; }}",
            quote(&dir.to_string_lossy())
        ));
    }
    script.push_str(&format!(" && exec {}", quote(&exe.to_string_lossy())));
    for a in command {
        script.push(' ');
        script.push_str(&quote(a));
    }
    let mut cmd = Command::new("ssh");
    cmd.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", host, &script]);
    cmd
}

fn this_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
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
