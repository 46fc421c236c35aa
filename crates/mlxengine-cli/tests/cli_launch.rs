//! `mlxengine launch -n 2 -- run ...`: the real binary as two ranks over the
//! ring backend on loopback gives the answer one process gives; what cannot
//! be split is a clear error and a non-zero exit, never a hang.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn mlxengine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("MLXENGINE_DISTRIBUTED")
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Two ranks (each with half of every layer, or half of the layers) answer
/// exactly as one process: greedy and sampled with a seed.
#[test]
fn two_ranks_answer_as_one_process() {
    let model = root().join("target/parity/llama");
    assert!(
        model.exists(),
        "{} is missing: run `cargo xtask parity-fixtures`",
        model.display()
    );
    let m = model.to_str().unwrap();
    for extra in [
        &["--temperature", "0"][..],
        &["--temperature", "0.8", "--seed", "7"][..],
    ] {
        let mut run = vec!["run", m, "Hello there", "--max-tokens", "12", "--json"];
        run.extend_from_slice(extra);
        let one = json_of(&mlxengine(&run));
        for split in ["tensor", "pipeline"] {
            let mut launch = vec!["launch", "-n", "2", "--split", split, "--"];
            launch.extend_from_slice(&run);
            let two = json_of(&mlxengine(&launch));
            assert_eq!(two["token_ids"], one["token_ids"], "{split} {extra:?}: {two} vs {one}");
            assert_eq!(two["text"], one["text"], "{split} {extra:?}");
        }
        assert_eq!(one["completion_tokens"], 12, "{one}");
    }
}

/// Refusals: heads that do not divide by the ranks (SmolLM2 has 9), an
/// interactive chat, a command that cannot be split, an unknown backend.
#[test]
fn what_cannot_be_split_is_a_clear_error() {
    let smol = root().join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        smol.exists(),
        "{} is missing: run `cargo xtask fetch-models`",
        smol.display()
    );
    let fixture = root().join("target/parity/llama");
    let cases: [(Vec<&str>, &str); 4] = [
        (
            vec![
                "launch",
                "-n",
                "2",
                "--",
                "run",
                smol.to_str().unwrap(),
                "Hi",
                "--max-tokens",
                "2",
            ],
            "9 attention heads do not divide by 2",
        ),
        (
            vec!["launch", "-n", "2", "--", "run", fixture.to_str().unwrap()],
            "give the prompt on the command line",
        ),
        (
            vec!["launch", "-n", "2", "--", "embed", "x", "y"],
            "cannot be split yet",
        ),
        (
            vec!["launch", "--backend", "smoke-signals", "--", "run", "x", "y"],
            "unknown --backend",
        ),
    ];
    for (args, want) in cases {
        let started = std::time::Instant::now();
        let out = mlxengine(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: stderr lacks `{want}`:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
        assert!(
            started.elapsed().as_secs() < 60,
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

/// A running `mlxengine [launch ... --] serve --port 0 ...`, stopped on drop.
struct Served {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Served {
    /// Starts the binary with `args` (ending in `serve ...`) and waits (at
    /// most 60 s) for its URL and for `/health` to say ok.
    fn start(args: &[&str]) -> Served {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
            .args(args)
            .args(["--port", "0"])
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("MLXENGINE_DISTRIBUTED")
            .env_remove("MLXENGINE_API_KEY")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(url.trim().to_string());
                }
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let Ok(url) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!("{args:?}: no URL; stderr:\n{}", log.lock().unwrap());
        };
        let served = Served {
            child,
            addr: url.parse().unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(served.addr, "GET", "/health", None).0 != 200 {
            assert!(Instant::now() < deadline, "{args:?} did not load:\n{}", served.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        served
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The content of a chat completion of `prompt` (`extra` merged into the request).
    fn chat(&self, model: &str, prompt: &str, extra: &serde_json::Value) -> String {
        let mut body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 12,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, reply) = http(self.addr, "POST", "/v1/chat/completions", Some(&body));
        assert_eq!(status, 200, "{reply}\n{}", self.log());
        reply["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use std::time::{Duration, Instant};

/// One request over a fresh loopback connection (bounded by a 60 s read
/// timeout): the status and the JSON body.
fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Fields after the command's closing parenthesis: state, ppid, ...
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            rest.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .collect()
}

/// `launch -n 2 -- serve`: rank 0 serves HTTP, both ranks step the batch
/// together; concurrent greedy and seeded requests get what one process
/// serves, for a pipeline split (SmolLM2: 9 heads do not divide by 2, its
/// 30 layers do) and a tensor split (the llama parity fixture). Other
/// models are refused, and stopping the launcher stops every rank.
#[test]
fn two_ranks_serve_as_one_process() {
    let started = Instant::now();
    let smol = root().join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let llama = root().join("target/parity/llama");
    for p in [&smol, &llama] {
        assert!(p.exists(), "{} is missing: run `cargo xtask test-models`", p.display());
    }
    let prompts = ["Say hi", "Count to three", "Name a colour"];
    for (model, split) in [(&smol, "pipeline"), (&llama, "tensor")] {
        let m = model.to_str().unwrap();
        let id = model.file_name().unwrap().to_str().unwrap();
        let one = Served::start(&["serve", "--model", m]);
        let two = Served::start(&["launch", "-n", "2", "--split", split, "--", "serve", "--model", m]);
        let ask = |s: &Served| -> Vec<String> {
            std::thread::scope(|scope| {
                let mut jobs: Vec<_> = prompts
                    .iter()
                    .map(|p| scope.spawn(move || s.chat(id, p, &serde_json::json!({"temperature": 0}))))
                    .collect();
                jobs.push(
                    scope.spawn(|| s.chat(id, "Tell a story", &serde_json::json!({"temperature": 0.9, "seed": 11}))),
                );
                jobs.into_iter().map(|j| j.join().unwrap()).collect()
            })
        };
        let (want, got) = (ask(&one), ask(&two));
        assert!(want.iter().all(|t| !t.is_empty()), "{want:?}");
        assert_eq!(got, want, "{split}: split vs one process\n{}", two.log());

        // Only the split model is served: no loading on demand across ranks.
        let (status, body) = http(
            two.addr,
            "POST",
            "/v1/chat/completions",
            Some(
                &serde_json::json!({"model": smol.parent().unwrap().join("nope").to_str(), "messages": [{"role": "user", "content": "x"}]}),
            ),
        );
        assert_eq!(status, 404, "{body}");
        assert!(body.to_string().contains("only the split model is served"), "{body}");

        // SIGTERM to the launcher stops both ranks, within bounds.
        let ranks = children_of(two.child.id());
        assert_eq!(ranks.len(), 2, "{ranks:?}");
        let mut two = two;
        Command::new("kill").arg(two.child.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while ranks
            .iter()
            .any(|r| std::path::Path::new(&format!("/proc/{r}")).exists())
        {
            let _ = two.child.try_wait();
            assert!(Instant::now() < deadline, "ranks {ranks:?} outlived the launcher");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// `launch -- serve` refuses what cannot be served split, on every rank,
/// with a clear error and a failing exit, never a hang.
#[test]
fn what_cannot_be_served_split_is_a_clear_error() {
    let smol = root().join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let minilm = root().join("target/models/all-MiniLM-L6-v2");
    let (s, e) = (smol.to_str().unwrap(), minilm.to_str().unwrap());
    let launch = |rest: &[&str]| {
        let mut a = vec!["launch", "-n", "2", "--split", "pipeline", "--", "serve", "--port", "0"];
        a.extend_from_slice(rest);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let cases = [
        (launch(&[]), "give one --model (got 0)"),
        (launch(&["--model", s, "--model", e]), "give one --model (got 2)"),
        (
            launch(&["--model", e]),
            "is an embedding model; only text models can be served split",
        ),
    ];
    for (args, want) in cases {
        let started = Instant::now();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = mlxengine(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: stderr lacks `{want}`:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

/// `launch --hostfile`: mlx.launch's host list; hosts that are this machine
/// start here (others would go through ssh, which cannot be tested here).
/// A hostfile listing localhost twice answers as one process; a bad one is
/// a clear error naming the file, never a hang.
#[test]
fn hostfile_of_this_machine_and_bad_hostfiles() {
    let model = root().join("target/parity/llama");
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let two = write(
        "two.json",
        r#"[{"ssh": "localhost", "ips": ["127.0.0.1"]}, {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]"#,
    );
    let run = [
        "run",
        m,
        "Hello there",
        "--max-tokens",
        "8",
        "--json",
        "--temperature",
        "0",
    ];
    let one = json_of(&mlxengine(&run));
    let mut launch = vec!["launch", "--hostfile", &two, "--"];
    launch.extend_from_slice(&run);
    let split = json_of(&mlxengine(&launch));
    assert_eq!(split["token_ids"], one["token_ids"], "{split} vs {one}");

    let missing = dir.path().join("missing.json").to_str().unwrap().to_string();
    let cases = [
        (missing.clone(), None, "cannot be read"),
        (write("bad.json", "[{\"ssh\": "), None, "is not JSON"),
        (write("empty.json", "[]"), None, "lists no hosts"),
        (write("noips.json", r#"[{"ssh": "localhost"}]"#), None, "has no \"ips\""),
        (two.clone(), Some("3"), "-n 3 disagrees with --hostfile"),
    ];
    for (file, n, want) in cases {
        let mut args = vec!["launch", "--hostfile", &file];
        if let Some(n) = n {
            args.extend(["-n", n]);
        }
        args.extend(["--", "run", m, "Hi"]);
        let started = Instant::now();
        let out = mlxengine(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(want) && stderr.contains(&file),
            "{args:?}: stderr lacks `{want}` or the file:\n{stderr}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}
