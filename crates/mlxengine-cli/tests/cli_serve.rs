//! `mlxengine serve` end to end: the real binary on a free loopback port, the
//! real models (`cargo xtask fetch-models`), and real clients — the official
//! `openai` Python package in the oracle venv (`scripts/setup.sh` installs it)
//! and plain HTTP over `std::net::TcpStream` for the Ollama endpoints and the
//! error cases.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn smollm() -> PathBuf {
    let p = root().join("target/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run `cargo xtask fetch-models`", p.display());
    p
}

fn minilm() -> PathBuf {
    let p = root().join("target/models/all-MiniLM-L6-v2");
    assert!(p.exists(), "{} is missing: run `cargo xtask fetch-models`", p.display());
    p
}

fn llava() -> PathBuf {
    root().join("crates/engine-vlm/tests/fixtures/llava")
}

const SMOLLM_ID: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MINILM_ID: &str = "all-MiniLM-L6-v2";

/// A running `mlxengine serve`, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `mlxengine serve --port 0 ARGS`, waits for the printed URL and
    /// for `/health` to say ok (the models are loaded).
    fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mlxengine"));
        cmd.arg("serve")
            .args(["--port", "0"])
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("MLXENGINE_API_KEY")
            .env_remove("MLXENGINE_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mlxengine serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("no `listening on` line; stderr:\n{}", log.lock().unwrap());
            }
        };
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .expect("URL is http://IP:PORT");
        let server = Server { child, addr, url, log };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let r = server.get("/health");
            if r.status == 200 {
                assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
                break;
            }
            assert_eq!(r.status, 503, "/health while loading: {}", r.text());
            assert!(
                r.json()["reason"].as_str().unwrap_or_default().contains("loading"),
                "{}",
                r.text()
            );
            assert!(
                Instant::now() < deadline,
                "models did not load; stderr:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The loaded models `/api/ps` lists: (name, expires_at).
    fn loaded(&self) -> Vec<(String, String)> {
        self.get("/api/ps").json()["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["expires_at"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// The names of the loaded models.
    fn loaded_names(&self) -> Vec<String> {
        self.loaded().into_iter().map(|(name, _)| name).collect()
    }

    fn get(&self, path: &str) -> HttpResponse {
        http(self.addr, "GET", path, &[], b"")
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> HttpResponse {
        http(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Runs a Python script with the official `openai` client; it gets the
    /// base URL (`.../v1`) as `sys.argv[1]` and prints one JSON object.
    fn python(&self, script: &str, extra: &[&str]) -> serde_json::Value {
        let python = root().join("target/oracle/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run `bash scripts/setup.sh`",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.py");
        std::fs::write(&file, script).unwrap();
        let out = Command::new(python)
            .arg(&file)
            .arg(format!("{}/v1", self.url))
            .args(extra)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .output()
            .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python failed: {}\nstdout: {stdout}\nserver:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("python printed no JSON ({e}): {stdout}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A whole HTTP/1.1 response (the connection is closed after it).
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpResponse {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request_head(method: &str, path: &str, host: &str, headers: &[(&str, &str)], len: usize) -> String {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {len}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// One request over a fresh connection; `Host` is `127.0.0.1:PORT` unless
/// `headers` has one.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| addr.to_string());
    let others: Vec<(&str, &str)> = headers
        .iter()
        .copied()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        .collect();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s.write_all(request_head(method, path, &host, &others, body.len()).as_bytes())
        .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// The value of a Prometheus sample line `name{labels} value` (`name` includes the labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Waits (up to 10 s) for a metric to read `value`.
fn wait_for_metric(server: &Server, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.get("/metrics").text();
        if metric(&text, name) == value {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is not {value}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const OPENAI_SCRIPT: &str = r#"
import base64, json, struct, sys
import openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="anything", max_retries=0)
smol, mini = sys.argv[2], sys.argv[3]
messages = [{"role": "user", "content": "What is the capital of France?"}]
out = {}
plain = client.chat.completions.create(model=smol, messages=messages, temperature=0, max_tokens=40)
out["plain_text"] = plain.choices[0].message.content
out["plain_finish"] = plain.choices[0].finish_reason
out["plain_usage"] = plain.usage.model_dump()
text, finish, usage, chunks = "", None, None, 0
for chunk in client.chat.completions.create(model=smol, messages=messages, temperature=0, max_tokens=40,
                                            stream=True, stream_options={"include_usage": True}):
    chunks += 1
    if chunk.usage is not None:
        usage = chunk.usage.model_dump()
    for c in chunk.choices:
        text += c.delta.content or ""
        finish = c.finish_reason or finish
out["stream_text"], out["stream_finish"], out["stream_usage"], out["stream_chunks"] = text, finish, usage, chunks
short = client.chat.completions.create(model=smol, messages=messages, temperature=0, max_completion_tokens=3)
out["short_finish"] = short.choices[0].finish_reason
out["short_tokens"] = short.usage.completion_tokens
stopped = client.chat.completions.create(model=smol, messages=messages, temperature=0, max_tokens=40, stop=[" Paris"])
out["stopped_text"] = stopped.choices[0].message.content
comp = client.completions.create(model=smol, prompt="The capital of France is", temperature=0, max_tokens=5)
out["completion_text"] = comp.choices[0].text
out["models"] = sorted(m.id for m in client.models.list())
texts = ["A cat sits on the mat", "Paris is the capital of France"]
emb = client.embeddings.create(model=mini, input=texts)
out["embeddings"] = [d.embedding for d in emb.data]
out["embed_usage"] = emb.usage.model_dump()
raw = client.embeddings.create(model=mini, input=texts, encoding_format="base64").model_dump()
out["base64_decoded"] = [list(struct.unpack("<%df" % (len(base64.b64decode(d["embedding"])) // 4),
                                          base64.b64decode(d["embedding"]))) for d in raw["data"]]
def error_of(fn):
    try:
        fn()
        return None
    except openai.APIStatusError as e:
        return {"class": type(e).__name__, "status": e.status_code, "body": e.body}
out["unknown_model"] = error_of(lambda: client.chat.completions.create(model="no-such-model", messages=messages))
out["json_mode"] = error_of(lambda: client.chat.completions.create(
    model=smol, messages=messages, response_format={"type": "json_object"}))
out["dimensions"] = error_of(lambda: client.embeddings.create(model=mini, input="x", dimensions=8))
out["chat_on_embedder"] = error_of(lambda: client.chat.completions.create(model=mini, messages=messages))
print(json.dumps(out))
"#;

/// The official `openai` client: chat plain and streamed agree (greedy, with
/// usage), stop strings and length limits, text completions, embeddings equal
/// to `mlxengine embed --json` (floats and base64), `/v1/models`, and errors
/// as the client's typed exceptions.
#[test]
fn openai_client_against_the_real_server() {
    let (smol, mini) = (smollm(), minilm());
    let server = Server::start(
        &["--model", smol.to_str().unwrap(), "--model", mini.to_str().unwrap()],
        &[],
    );
    let out = server.python(OPENAI_SCRIPT, &[SMOLLM_ID, MINILM_ID]);

    let plain = out["plain_text"].as_str().unwrap();
    assert!(plain.contains("Paris"), "{plain}");
    assert_eq!(
        out["stream_text"], out["plain_text"],
        "streamed and plain greedy answers differ"
    );
    assert_eq!(out["plain_finish"], "stop");
    assert_eq!(out["stream_finish"], "stop");
    assert_eq!(
        out["stream_usage"], out["plain_usage"],
        "usage differs between plain and streamed"
    );
    let usage = &out["plain_usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 10 && c > 0, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);
    assert!(out["stream_chunks"].as_u64().unwrap() >= c, "{}", out["stream_chunks"]);
    assert_eq!(out["short_finish"], "length");
    assert_eq!(out["short_tokens"], 3);
    let stopped = out["stopped_text"].as_str().unwrap();
    assert!(
        !stopped.contains("Paris") && plain.starts_with(stopped),
        "stop: {stopped:?} vs {plain:?}"
    );
    assert!(
        out["completion_text"].as_str().unwrap().contains("Paris"),
        "{}",
        out["completion_text"]
    );
    assert_eq!(out["models"], serde_json::json!([SMOLLM_ID, MINILM_ID]));

    // Embeddings equal the CLI's for the same texts.
    let cli = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args([
            "embed",
            mini.to_str().unwrap(),
            "A cat sits on the mat",
            "Paris is the capital of France",
            "--json",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    let want = cli["embeddings"].as_array().unwrap();
    for key in ["embeddings", "base64_decoded"] {
        let got = out[key].as_array().unwrap();
        assert_eq!(got.len(), 2, "{key}");
        for (g, w) in got.iter().zip(want) {
            let (g, w) = (g.as_array().unwrap(), w.as_array().unwrap());
            assert_eq!(g.len(), 384, "{key}");
            assert_eq!(g.len(), w.len(), "{key}");
            let worst = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs())
                .fold(0.0, f64::max);
            assert!(worst <= 1e-5, "{key}: differs from `mlxengine embed --json` by {worst}");
        }
    }
    assert!(out["embed_usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let e = &out["unknown_model"];
    assert_eq!(e["class"], "NotFoundError", "{e}");
    assert_eq!(e["status"], 404);
    let msg = e["body"]["message"].as_str().unwrap();
    assert!(msg.contains("no-such-model") && msg.contains(SMOLLM_ID), "{msg}");
    for (case, param) in [
        ("json_mode", "response_format"),
        ("dimensions", "dimensions"),
        ("chat_on_embedder", "model"),
    ] {
        let e = &out[case];
        assert_eq!(e["class"], "BadRequestError", "{case}: {e}");
        assert_eq!(e["body"]["param"], param, "{case}: {e}");
    }
}

/// The Ollama endpoints (NDJSON streams, `stream: false`, tags, embed,
/// version, ps, show), the HTTP errors (bad JSON, too large, bad Host, no
/// route) and `/metrics` moving after requests.
#[test]
fn ollama_endpoints_errors_and_metrics() {
    let (smol, mini) = (smollm(), minilm());
    let server = Server::start(
        &["--model", smol.to_str().unwrap(), "--model", mini.to_str().unwrap()],
        &[],
    );
    let before = server.get("/metrics").text();
    let question = serde_json::json!([{"role": "user", "content": "What is the capital of France?"}]);

    // /api/chat streams NDJSON by default.
    let r = server.post(
        "/api/chat",
        &serde_json::json!({"model": SMOLLM_ID, "messages": question, "options": {"temperature": 0, "num_predict": 40}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON per line"))
        .collect();
    assert!(lines.len() > 2, "{}", r.text());
    let (last, pieces) = lines.split_last().unwrap();
    assert!(pieces
        .iter()
        .all(|l| l["done"] == false && l["message"]["role"] == "assistant"));
    let answer: String = pieces
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert!(answer.contains("Paris"), "{answer}");
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert!(last["eval_count"].as_u64().unwrap() >= pieces.len() as u64, "{last}");
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 10, "{last}");
    assert!(last["total_duration"].as_u64().unwrap() > 0, "{last}");

    // /api/generate with stream false: one object, the same greedy answer.
    let r = server.post(
        "/api/generate",
        &serde_json::json!({"model": SMOLLM_ID, "prompt": "What is the capital of France?", "stream": false,
                            "options": {"temperature": 0, "num_predict": 40}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let g = r.json();
    assert_eq!(g["response"].as_str().unwrap(), answer);
    assert_eq!(g["done"], true);
    assert_eq!(g["model"], SMOLLM_ID);

    let tags = server.get("/api/tags").json();
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [SMOLLM_ID, MINILM_ID]);
    assert!(tags["models"][0]["size"].as_u64().unwrap() > 50_000_000, "{tags}");
    assert_eq!(server.get("/api/ps").json()["models"].as_array().unwrap().len(), 2);
    let show = server.post(
        "/api/show",
        &serde_json::json!({"model": format!("{MINILM_ID}:latest")}),
    );
    assert_eq!(show.status, 200, "{}", show.text());
    assert_eq!(show.json()["capabilities"], serde_json::json!(["embedding"]));
    assert_eq!(server.get("/api/version").json()["version"], env!("CARGO_PKG_VERSION"));

    let e = server.post(
        "/api/embed",
        &serde_json::json!({"model": MINILM_ID, "input": ["hello", "world"]}),
    );
    assert_eq!(e.status, 200, "{}", e.text());
    let ollama = e.json()["embeddings"].clone();
    let openai = server.post(
        "/v1/embeddings",
        &serde_json::json!({"model": MINILM_ID, "input": ["hello", "world"]}),
    );
    let openai: Vec<serde_json::Value> = openai.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].clone())
        .collect();
    assert_eq!(ollama.as_array().unwrap().len(), 2);
    assert_eq!(ollama[0].as_array().unwrap().len(), 384);
    assert_eq!(ollama, serde_json::Value::Array(openai));

    // Ollama's error shape on its own endpoints.
    let r = server.post("/api/chat", &serde_json::json!({"model": "nope", "messages": question}));
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"), "{}", r.text());

    // Bad JSON: 400, OpenAI-shaped.
    let r = http(
        server.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        b"{\"model\": ",
    );
    assert_eq!(r.status, 400);
    let err = &r.json()["error"];
    assert_eq!(err["type"], "invalid_request_error");
    assert!(err["message"].as_str().unwrap().contains("invalid JSON"), "{err}");
    assert!(err.get("param").is_some() && err.get("code").is_some(), "{err}");
    // A wrong field type is a 400 too.
    let r = server.post(
        "/v1/chat/completions",
        &serde_json::json!({"model": SMOLLM_ID, "messages": "hi"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // A body over the 32 MiB limit: 413.
    let big = vec![b' '; (32 << 20) + 1024];
    let r = http(
        server.addr,
        "POST",
        "/v1/embeddings",
        &[("Content-Type", "application/json")],
        &big,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("limit"));
    // DNS rebinding: a foreign Host on a loopback bind is refused.
    let r = http(
        server.addr,
        "GET",
        "/v1/models",
        &[("Host", "attacker.example:11435")],
        b"",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = http(server.addr, "GET", "/v1/models", &[("Host", "localhost:11435")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.get("/v1/nothing").status, 404);
    let r = http(server.addr, "DELETE", "/v1/models", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(server.get("/health").status, 200);

    let after = server.get("/metrics").text();
    let chat_ok = "mlxengine_requests_total{endpoint=\"/api/chat\",status=\"200\"}";
    assert_eq!(metric(&before, chat_ok), 0.0);
    assert_eq!(metric(&after, chat_ok), 1.0, "{after}");
    assert_eq!(
        metric(
            &after,
            "mlxengine_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &after,
            "mlxengine_requests_total{endpoint=\"/v1/models\",status=\"403\"}"
        ),
        1.0
    );
    assert!(metric(&after, "mlxengine_generated_tokens_total") > metric(&before, "mlxengine_generated_tokens_total"));
    assert!(metric(&after, "mlxengine_prompt_tokens_total") > 20.0);
    assert_eq!(
        metric(&after, "mlxengine_time_to_first_token_seconds_count"),
        2.0,
        "{after}"
    );
    // Every token after a generation's first is one inter-token interval.
    let generated =
        metric(&after, "mlxengine_generated_tokens_total") - metric(&before, "mlxengine_generated_tokens_total");
    assert_eq!(
        metric(&after, "mlxengine_inter_token_latency_seconds_count"),
        generated - 2.0,
        "{after}"
    );
    assert_eq!(metric(&after, "mlxengine_resident_models"), 2.0);
    wait_for_metric(&server, "mlxengine_requests_running", 0.0);
}

/// Starts a long greedy stream (counting, which this model continues to
/// `max_tokens`: minutes on a CPU) and reads until a few text chunks arrived,
/// so the model is busy generating; returns the open connection.
fn open_long_stream(server: &Server) -> TcpStream {
    let body = serde_json::json!({
        "model": SMOLLM_ID, "stream": true, "temperature": 0, "max_tokens": 2000,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
    })
    .to_string();
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = request_head(
        "POST",
        "/v1/completions",
        &server.addr.to_string(),
        &[("Content-Type", "application/json")],
        body.len(),
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&seen).matches("\"text\":").count() < 4 {
        let n = s.read(&mut buf).expect("stream data");
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

fn short_chat() -> serde_json::Value {
    serde_json::json!({"model": SMOLLM_ID, "temperature": 0, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "Hi"}]})
}

/// A client that drops its stream mid-answer stops the generation: the next
/// request is answered at once, and the server counts the cancellation.
#[test]
fn a_disconnected_stream_frees_the_model() {
    let smol = smollm();
    let server = Server::start(&["--model", smol.to_str().unwrap()], &[]);
    drop(open_long_stream(&server));
    // 2000 tokens would take minutes on this CPU; a stopped generation frees the model at once.
    let started = Instant::now();
    let r = server.post("/v1/chat/completions", &short_chat());
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        took < Duration::from_secs(30),
        "the next request waited {took:?}: the dropped generation kept running"
    );
    let metrics = server.get("/metrics").text();
    assert_eq!(
        metric(&metrics, "mlxengine_generations_cancelled_total"),
        1.0,
        "{metrics}"
    );
    // The worker lowers the gauge just after it sent the answer's last event.
    wait_for_metric(&server, "mlxengine_requests_running", 0.0);
}

/// With `--max-queue 1 --parallel 1`: one request runs, one waits, the next is a 429
/// with `Retry-After`; the waiting one runs once the first is dropped.
#[test]
fn a_full_queue_answers_429() {
    let smol = smollm();
    let server = Server::start(
        &["--model", smol.to_str().unwrap(), "--max-queue", "1", "--parallel", "1"],
        &[],
    );
    let running = open_long_stream(&server);
    let addr = server.addr;
    let waiting = std::thread::spawn(move || {
        let body = short_chat().to_string();
        http(
            addr,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&server.get("/metrics").text(), "mlxengine_requests_waiting") < 1.0 {
        assert!(Instant::now() < deadline, "the second request never queued");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = server.post("/v1/chat/completions", &short_chat());
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    drop(running);
    let r = waiting.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// With `--parallel 2` a text model batches two streams: a second long
/// stream produces tokens while the first is still generating (with
/// `--parallel 1` it would wait in the queue, and the read would time out),
/// from one copy of the weights.
#[test]
fn parallel_streams_are_batched() {
    let smol = smollm();
    let server = Server::start(&["--model", smol.to_str().unwrap(), "--parallel", "2"], &[]);
    let first = open_long_stream(&server);
    let second = open_long_stream(&server);
    let m = server.get("/metrics").text();
    assert_eq!(metric(&m, "mlxengine_requests_running"), 2.0, "{m}");
    assert_eq!(metric(&m, "mlxengine_resident_models"), 1.0, "{m}");
    drop((first, second));
    wait_for_metric(&server, "mlxengine_generations_cancelled_total", 2.0);
}

/// A model a client names by its local path is loaded on demand, listed,
/// and unloaded after `--keep-alive` idle; a name that is neither served nor
/// local is a 404 naming it.
#[test]
fn on_demand_models_unload_after_keep_alive() {
    let mini = minilm();
    let server = Server::start(&["--keep-alive", "1s"], &[]);
    let r = server.post(
        "/v1/embeddings",
        &serde_json::json!({"model": mini.to_str().unwrap(), "input": "hello"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], MINILM_ID);
    let ps = server.get("/api/ps").json();
    assert_eq!(ps["models"][0]["name"], MINILM_ID, "{ps}");
    assert_eq!(metric(&server.get("/metrics").text(), "mlxengine_resident_models"), 1.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.get("/api/ps").json()["models"].as_array().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the idle on-demand model was not unloaded");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(metric(&server.get("/metrics").text(), "mlxengine_resident_models"), 0.0);
    let r = server.post(
        "/v1/embeddings",
        &serde_json::json!({"model": "org/not-cached", "input": "x"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("org/not-cached"),
        "{}",
        r.text()
    );
}

const AUTH_SCRIPT: &str = r#"
import json, sys
import openai
out = {}
try:
    openai.OpenAI(base_url=sys.argv[1], api_key="wrong", max_retries=0).models.list()
    out["wrong"] = None
except openai.APIStatusError as e:
    out["wrong"] = {"class": type(e).__name__, "status": e.status_code}
out["right"] = [m.id for m in openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0).models.list()]
print(json.dumps(out))
"#;

/// With `--api-key` (or `MLXENGINE_API_KEY`), every endpoint but `/health`
/// needs the bearer key: a wrong one is the client's `AuthenticationError`.
#[test]
fn api_key_is_required() {
    for (args, env) in [
        (vec!["--api-key", "s3cret"], vec![]),
        (vec![], vec![("MLXENGINE_API_KEY", "s3cret")]),
    ] {
        let server = Server::start(&args, &env);
        let out = server.python(AUTH_SCRIPT, &["s3cret"]);
        assert_eq!(out["wrong"]["class"], "AuthenticationError", "{out}");
        assert_eq!(out["wrong"]["status"], 401);
        assert_eq!(out["right"], serde_json::json!([]));
        assert_eq!(server.get("/health").status, 200);
        let r = server.get("/api/tags");
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"]["type"], "authentication_error");
        let ok = http(
            server.addr,
            "GET",
            "/api/tags",
            &[("Authorization", "Bearer s3cret")],
            b"",
        );
        assert_eq!(ok.status, 200, "{}", ok.text());
    }
    // Without a key, any bearer is accepted.
    let server = Server::start(&[], &[]);
    let r = http(
        server.addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer whatever")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

const VISION_SCRIPT: &str = r#"
import base64, json, sys
import openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="x", max_retries=0)
url = "data:image/png;base64," + base64.b64encode(open(sys.argv[3], "rb").read()).decode()
r = client.chat.completions.create(model=sys.argv[2], temperature=0, max_tokens=12, messages=[{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": url}},
    {"type": "text", "text": "What is in the image ?"}]}])
print(json.dumps({"text": r.choices[0].message.content, "usage": r.usage.model_dump()}))
"#;

/// A chat with a base64 data-URL image on the tiny LLaVA checkpoint: the
/// prompt has transformers' token count (the image expanded into its
/// positions) and the answer is `mlxengine run --image`'s.
#[test]
fn vision_chat_with_a_data_url_image() {
    let model = llava();
    let image = model.join("image0.png");
    let server = Server::start(&["--model", model.to_str().unwrap()], &[]);
    let out = server.python(VISION_SCRIPT, &["llava", image.to_str().unwrap()]);

    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("expected.json")).unwrap()).unwrap();
    let input_ids = expected["cases"]["one_image"]["input_ids"].as_array().unwrap().len() as u64;
    assert_eq!(out["usage"]["prompt_tokens"].as_u64().unwrap(), input_ids, "{out}");

    let cli = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args([
            "run",
            model.to_str().unwrap(),
            "What is in the image ?",
            "--image",
            image.to_str().unwrap(),
        ])
        .args(["--temperature", "0", "--max-tokens", "12", "--json"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(out["text"], cli["text"], "server {out} vs run --json {cli}");
    assert_eq!(out["usage"]["completion_tokens"], cli["completion_tokens"]);
}

/// With `--max-loaded 1`, asking for a second on-demand model unloads the
/// idle first one; a preloaded model is never unloaded, so with it loaded
/// and the limit reached another model is a 503 naming the flag.
#[test]
fn max_loaded_unloads_the_least_recently_used_model() {
    let (mini, smol) = (minilm(), smollm());
    let server = Server::start(&["--max-loaded", "1"], &[]);
    let embed = serde_json::json!({"model": mini.to_str().unwrap(), "input": "hello"});
    assert_eq!(server.post("/v1/embeddings", &embed).status, 200);
    let mut chat = short_chat();
    chat["model"] = serde_json::json!(smol.to_str().unwrap());
    let r = server.post("/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.loaded_names(), [SMOLLM_ID]);
    assert_eq!(metric(&server.get("/metrics").text(), "mlxengine_resident_models"), 1.0);

    let pinned = Server::start(&["--model", smol.to_str().unwrap(), "--max-loaded", "1"], &[]);
    let r = pinned.post("/v1/embeddings", &embed);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("--max-loaded"), "{}", r.text());
    assert_eq!(pinned.post("/v1/chat/completions", &short_chat()).status, 200);
}

const IMAGES_SCRIPT: &str = r#"
import json, sys
import openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)
r = c.images.generate(model=sys.argv[2], prompt="a red square on grass", n=2, size="64x64",
                      response_format="b64_json",
                      extra_body={"seed": 5, "num_inference_steps": 2, "guidance_scale": 7.5})
out = {"images": [d.b64_json for d in r.data]}
try:
    c.images.generate(model=sys.argv[2], prompt="x", size="65x64", response_format="b64_json")
    out["bad_size"] = None
except openai.BadRequestError as e:
    out["bad_size"] = e.status_code
print(json.dumps(out))
"#;

/// `POST /v1/images/generations` through the official `openai` client on the
/// tiny SD 1.x pipeline: the PNGs are exactly what `mlxengine imagine` writes
/// for the same prompt, size, steps, guidance and seed; bad fields are 400s.
#[test]
fn images_generations_match_imagine() {
    let sd = root().join("crates/engine-diffusion/tests/fixtures/sd1");
    let server = Server::start(&["--model", sd.to_str().unwrap()], &[]);
    let out = server.python(IMAGES_SCRIPT, &["sd1"]);
    assert_eq!(out["bad_size"], 400, "{out}");
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("out.png");
    let cli = Command::new(env!("CARGO_BIN_EXE_mlxengine"))
        .args([
            "imagine",
            sd.to_str().unwrap(),
            "a red square on grass",
            "--size",
            "64x64",
        ])
        .args(["--steps", "2", "--guidance", "7.5", "--seed", "5", "-n", "2", "-o"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let images = out["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for (i, b64) in images.iter().enumerate() {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let served = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let written = image::open(dir.path().join(format!("out-{}.png", i + 1)))
            .unwrap()
            .to_rgb8();
        assert_eq!(served.dimensions(), (64, 64));
        assert!(served == written, "image {i} differs from `mlxengine imagine`'s");
    }
    let bad = |body: serde_json::Value| server.post("/v1/images/generations", &body);
    let r = bad(serde_json::json!({"model": "sd1", "prompt": "x", "response_format": "url"}));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("b64_json"), "{}", r.text());
    assert_eq!(
        bad(serde_json::json!({"model": "sd1", "prompt": "x", "n": 0})).status,
        400
    );
    let r = server.post(
        "/v1/chat/completions",
        &serde_json::json!({"model": "sd1", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("/v1/images/generations"), "{}", r.text());
}

/// Embedding requests that wait while the model is busy run as one batch:
/// each still gets exactly the vectors it gets alone, and the batch counter
/// moves by fewer runs than there were requests.
#[test]
fn embedding_requests_are_batched() {
    let mini = minilm();
    let server = Server::start(&["--model", mini.to_str().unwrap()], &[]);
    let texts: Vec<String> = (0..8)
        .map(|i| format!("request {i}: the quick brown fox jumps over {i} lazy dogs"))
        .collect();
    let embed = |input: serde_json::Value| {
        let r = server.post(
            "/v1/embeddings",
            &serde_json::json!({"model": MINILM_ID, "input": input}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let data = r.json()["data"].as_array().unwrap().clone();
        data.iter()
            .map(|d| {
                d["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect::<Vec<f64>>()
            })
            .collect::<Vec<_>>()
    };
    let alone: Vec<Vec<f64>> = texts.iter().map(|t| embed(serde_json::json!(t)).remove(0)).collect();
    let runs_before = metric(&server.get("/metrics").text(), "mlxengine_embed_batches_total");
    // A long request keeps the model busy while the short ones queue behind it.
    let long: Vec<String> = (0..192)
        .map(|i| format!("filler sentence number {i} about nothing in particular, repeated to take time"))
        .collect();
    let together: Vec<Vec<f64>> = std::thread::scope(|s| {
        let busy = s.spawn(|| embed(serde_json::json!(long)));
        std::thread::sleep(Duration::from_millis(50));
        let handles: Vec<_> = texts
            .iter()
            .map(|t| {
                let embed = &embed;
                s.spawn(move || embed(serde_json::json!(t)).remove(0))
            })
            .collect();
        let out = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(busy.join().unwrap().len(), long.len());
        out
    });
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "request {i}: batched vector differs by {worst}");
    }
    let runs = metric(&server.get("/metrics").text(), "mlxengine_embed_batches_total") - runs_before;
    assert!(
        runs < (texts.len() + 1) as f64,
        "{} requests took {runs} runs: none were batched",
        texts.len() + 1
    );
}

/// Ollama's per-request `keep_alive`: a duration keeps the model that long
/// after the request (then it unloads), negative keeps it for good, a request
/// with no prompt loads the model, or unloads it with `keep_alive: 0`; a
/// preloaded model stays; a bad value is a 400 naming the field.
#[test]
fn ollama_keep_alive_per_request() {
    let (mini, smol) = (minilm(), smollm());
    let server = Server::start(&["--model", smol.to_str().unwrap()], &[]);
    let mini_s = mini.to_str().unwrap();
    let r = server.post(
        "/api/embed",
        &serde_json::json!({"model": mini_s, "input": "hi", "keep_alive": -1}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ps = server.loaded();
    let forever = &ps.iter().find(|(n, _)| n == MINILM_ID).unwrap().1;
    assert!(forever.starts_with("9999"), "keep_alive -1 expires at {forever}");
    // keep_alive 0 with no prompt unloads it at once.
    let r = server.post("/api/generate", &serde_json::json!({"model": mini_s, "keep_alive": 0}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["done_reason"], "unload", "{}", r.text());
    assert!(
        !server.loaded().iter().any(|(n, _)| n == MINILM_ID),
        "keep_alive 0 did not unload"
    );
    let r = server.post(
        "/api/embed",
        &serde_json::json!({"model": mini_s, "input": "hi", "keep_alive": "2s"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ps = server.loaded();
    let soon = &ps.iter().find(|(n, _)| n == MINILM_ID).unwrap().1;
    assert!(!soon.starts_with("9999"), "keep_alive 2s expires at {soon}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.loaded().iter().any(|(n, _)| n == MINILM_ID) {
        assert!(Instant::now() < deadline, "keep_alive 2s did not unload the model");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        server.loaded().iter().any(|(n, _)| n == SMOLLM_ID),
        "the preloaded model stays"
    );

    // The preloaded model is not unloaded by a client.
    let r = server.post(
        "/api/chat",
        &serde_json::json!({"model": SMOLLM_ID, "messages": [], "keep_alive": 0}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("--model"), "{}", r.text());
    let r = server.post("/api/chat", &serde_json::json!({"model": SMOLLM_ID, "messages": []}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["done_reason"], "load");
    let r = server.post(
        "/api/generate",
        &serde_json::json!({"model": SMOLLM_ID, "prompt": "Hi", "keep_alive": "soon"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("keep"), "{}", r.text());
}

/// `--memory-budget`: a model that would overflow the budget unloads the
/// idle on-demand one first; one that does not fit even alone is refused
/// with a 503 naming the flag; `/metrics` shows each model's memory and the
/// errors by kind.
#[test]
fn memory_budget_unloads_and_refuses() {
    let (mini, smol) = (minilm(), smollm());
    let sizes = [
        std::fs::metadata(mini.join("model.safetensors")).unwrap().len(),
        std::fs::metadata(&smol).unwrap().len(),
    ];
    // Each fits alone; both (the first one's measured memory + the second's weights) do not.
    let budget = format!("{}B", sizes.iter().max().unwrap() + sizes.iter().min().unwrap() / 2);
    let server = Server::start(&["--memory-budget", &budget], &[]);
    let r = server.post(
        "/v1/embeddings",
        &serde_json::json!({"model": mini.to_str().unwrap(), "input": "hello"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = server.get("/metrics").text();
    let mem = metric(&text, &format!("mlxengine_model_memory_bytes{{model=\"{MINILM_ID}\"}}"));
    assert!(mem > 1e6, "MiniLM's resident memory reads {mem}:\n{text}");
    let ps = server.get("/api/ps").json();
    assert_eq!(ps["models"][0]["size"].as_f64().unwrap(), mem, "{ps}");
    let mut chat = short_chat();
    chat["model"] = serde_json::json!(smol.to_str().unwrap());
    let r = server.post("/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        server.loaded_names(),
        [SMOLLM_ID],
        "MiniLM should have been unloaded for the budget"
    );
    let text = server.get("/metrics").text();
    assert_eq!(
        metric(&text, &format!("mlxengine_model_memory_bytes{{model=\"{MINILM_ID}\"}}")),
        0.0,
        "{text}"
    );

    let tight = Server::start(&["--memory-budget", "1MB"], &[]);
    let r = tight.post(
        "/v1/embeddings",
        &serde_json::json!({"model": mini.to_str().unwrap(), "input": "hello"}),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "insufficient_memory", "{}", r.text());
    assert!(r.text().contains("--memory-budget"), "{}", r.text());
    let r = tight.post(
        "/v1/embeddings",
        &serde_json::json!({"model": "org/not-cached", "input": "x"}),
    );
    assert_eq!(r.status, 404);
    let text = tight.get("/metrics").text();
    assert_eq!(
        metric(&text, "mlxengine_errors_total{kind=\"insufficient_memory\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "mlxengine_errors_total{kind=\"model_not_found\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "mlxengine_memory_budget_bytes"), 1e6, "{text}");
}
