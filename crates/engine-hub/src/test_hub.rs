//! A real Hugging Face–compatible hub on `127.0.0.1`, for tests and benches
//! (cargo feature `test-hub`). It serves a folder whose `org/name/`
//! sub-folders are repos, with the API subset this crate uses, in the real
//! hub's JSON shapes and headers:
//!
//! - `GET /api/models?search=&author=&filter=&pipeline_tag=&sort=&direction=&limit=`
//! - `GET /api/models/{org}/{name}[/revision/{rev}][?blobs=true]`
//! - `GET /api/models/{org}/{name}/tree/{rev}[/{dir}][?recursive=true]`
//! - `HEAD|GET /{org}/{name}/resolve/{rev}/{file}`: small files are served
//!   directly with `ETag` (git blob id) and `X-Repo-Commit`; LFS files answer
//!   `302` to `http://localhost:PORT/cdn-lfs/{sha256}` (another origin, as
//!   the real hub's CDN is another host) with `X-Linked-Etag` and
//!   `X-Linked-Size`.
//! - `GET /cdn-lfs/{sha256}`: the content, with `Range` support.
//!
//! Revisions are `main` and the commit hash (derived from the files).
//! Optional per-repo metadata (downloads, likes, tags, …) comes from
//! [`TestHub::set_meta`] or an `org/name/.hubmeta.json` file.
//!
//! [`Faults`] inject failures into content requests: a connection dropped
//! at a chosen byte, a corrupted byte, 429 with `Retry-After`, 500s, a slow
//! trickle, and hostile names in file listings. Every request is recorded.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// File extensions stored with LFS (as the default `.gitattributes` does).
const LFS_EXTENSIONS: &[&str] = &[
    "safetensors",
    "bin",
    "gguf",
    "npz",
    "pt",
    "pth",
    "ckpt",
    "h5",
    "msgpack",
    "onnx",
    "model",
    "ot",
    "zip",
];
const META_FILE: &str = ".hubmeta.json";

/// Failures to inject. Counters (`*_times`) go down as faults fire; they
/// apply to content requests (`resolve` bodies and `/cdn-lfs/`), optionally
/// only for the file named `only_file`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close the connection once the body reaches this byte offset of the file.
    pub drop_at: Option<u64>,
    /// How many responses get dropped.
    pub drop_times: u32,
    /// Flip the byte at this offset of the file.
    pub corrupt_at: Option<u64>,
    /// How many responses get corrupted.
    pub corrupt_times: u32,
    /// Answer this many requests with 429.
    pub status_429_times: u32,
    /// `Retry-After` seconds sent with 429.
    pub retry_after_secs: u64,
    /// Answer this many requests with 500.
    pub status_500_times: u32,
    /// Send bodies at about this many bytes per second.
    pub trickle_bytes_per_sec: Option<u64>,
    /// Names added to every file listing (e.g. `../../escape`); resolving
    /// them serves a small body, so a client that trusts them gets hurt.
    pub extra_names: Vec<String>,
    /// Apply the content faults only to this repo file name.
    pub only_file: Option<String>,
}

/// Listing metadata of a repo.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ModelMeta {
    /// Downloads.
    pub downloads: u64,
    /// Likes.
    pub likes: u64,
    /// Tags; the library is added when missing.
    pub tags: Vec<String>,
    /// Pipeline tag.
    pub pipeline_tag: Option<String>,
    /// Library; derived from the files when absent.
    pub library_name: Option<String>,
    /// RFC 3339 time; default `2024-01-01T00:00:00.000Z`.
    #[serde(rename = "lastModified")]
    pub last_modified: Option<String>,
}

/// One request the hub answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Method.
    pub method: String,
    /// Request target (path and query), as sent.
    pub target: String,
    /// `Range` header.
    pub range: Option<String>,
    /// `Authorization` header.
    pub authorization: Option<String>,
    /// Status answered.
    pub status: u16,
    /// Body bytes actually written.
    pub body_bytes: u64,
}

#[derive(Clone)]
struct Hashes {
    len: u64,
    mtime: Option<SystemTime>,
    sha256: Option<String>,
    blob_id: String,
}

struct State {
    root: PathBuf,
    cdn_base: String,
    lfs_threshold: u64,
    token: Option<String>,
    faults: Mutex<Faults>,
    log: Mutex<Vec<RequestRecord>>,
    hashes: Mutex<HashMap<PathBuf, Hashes>>,
    /// sha256 → (file path, repo file name), filled as files are listed.
    lfs_index: Mutex<HashMap<String, (PathBuf, String)>>,
    meta: Mutex<HashMap<String, ModelMeta>>,
    /// Connections accepted and not yet logged.
    in_flight: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler thread must not take the hub down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings of a [`TestHub`] before it starts.
#[derive(Debug, Clone)]
pub struct TestHubBuilder {
    root: PathBuf,
    port: u16,
    lfs_threshold: u64,
    cdn_base: Option<String>,
    token: Option<String>,
}

impl TestHubBuilder {
    /// Port to bind on 127.0.0.1 (0, the default, picks a free one).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    /// Files at least this large are LFS files (default 10 MiB); files with
    /// a weight extension always are.
    pub fn lfs_threshold(mut self, bytes: u64) -> Self {
        self.lfs_threshold = bytes;
        self
    }
    /// Base URL LFS redirects point to (default: this hub as
    /// `http://localhost:PORT`, another origin than `http://127.0.0.1:PORT`).
    /// Point it at a second hub to play a CDN on another port.
    pub fn cdn_base(mut self, url: impl Into<String>) -> Self {
        self.cdn_base = Some(url.into().trim_end_matches('/').to_string());
        self
    }
    /// Refuse API and resolve requests without `Authorization: Bearer <token>`.
    pub fn require_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// Binds and starts serving.
    pub fn start(self) -> io::Result<TestHub> {
        let listener = TcpListener::bind(("127.0.0.1", self.port))?;
        let port = listener.local_addr()?.port();
        let url = format!("http://127.0.0.1:{port}");
        let state = Arc::new(State {
            root: self.root,
            // Another host name for the same socket: like the real hub's CDN, LFS
            // redirects leave the endpoint's origin (clients must not follow them
            // for metadata, nor send the token there).
            cdn_base: self.cdn_base.unwrap_or_else(|| format!("http://localhost:{port}")),
            lfs_threshold: self.lfs_threshold,
            token: self.token,
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            hashes: Mutex::new(HashMap::new()),
            lfs_index: Mutex::new(HashMap::new()),
            meta: Mutex::new(HashMap::new()),
            in_flight: Default::default(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let accept = std::thread::Builder::new().name("test-hub".into()).spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                st.in_flight.fetch_add(1, Ordering::SeqCst);
                let spawned = std::thread::Builder::new().name("test-hub-conn".into()).spawn({
                    let st = st.clone();
                    move || {
                        let _ = handle(conn, &st);
                        st.in_flight.fetch_sub(1, Ordering::SeqCst);
                    }
                });
                if spawned.is_err() {
                    st.in_flight.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
        Ok(TestHub {
            url,
            port,
            state,
            stop,
            accept: Some(accept),
        })
    }
}

/// A running hub; stops when dropped.
pub struct TestHub {
    url: String,
    port: u16,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TestHub {
    /// Settings for a hub serving `root`.
    pub fn builder(root: impl Into<PathBuf>) -> TestHubBuilder {
        TestHubBuilder {
            root: root.into(),
            port: 0,
            lfs_threshold: 10 << 20,
            cdn_base: None,
            token: None,
        }
    }

    /// Serves `root` on a free port with default settings.
    pub fn serve(root: impl Into<PathBuf>) -> io::Result<TestHub> {
        Self::builder(root).start()
    }

    /// `http://127.0.0.1:PORT`, the value for `HF_ENDPOINT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Replaces the fault settings.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.state.faults) = faults;
    }

    /// Current fault settings (counters show what has not fired yet).
    pub fn faults(&self) -> Faults {
        lock(&self.state.faults).clone()
    }

    /// Sets the listing metadata of `repo`.
    pub fn set_meta(&self, repo: &str, meta: ModelMeta) {
        lock(&self.state.meta).insert(repo.to_string(), meta);
    }

    /// Requests answered so far. Waits (up to 5 s) for connections still
    /// being served, since a client can finish reading a response before
    /// the server thread has logged it.
    pub fn requests(&self) -> Vec<RequestRecord> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.state.in_flight.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        lock(&self.state.log).clone()
    }

    /// Forgets the recorded requests, once connections in flight are done
    /// (up to 5 s), so none of them is logged after the clear.
    pub fn clear_requests(&self) {
        self.requests();
        lock(&self.state.log).clear();
    }

    /// The commit hash `main` resolves to for `repo` (as the API reports it).
    pub fn commit_of(&self, repo: &str) -> io::Result<String> {
        let files = repo_files(&self.state, repo)?;
        Ok(commit_hash(repo, &files))
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A file of a served repo.
#[derive(Clone)]
struct ServedFile {
    name: String,
    path: PathBuf,
    hashes: Hashes,
}

fn repo_dir(state: &State, repo: &str) -> Option<PathBuf> {
    let (org, name) = repo.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\']);
    if !ok(org) || !ok(name) {
        return None;
    }
    let dir = state.root.join(org).join(name);
    dir.is_dir().then_some(dir)
}

fn git_blob_id(content: &[u8]) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    h.digest().to_string()
}

fn lfs_pointer(sha256: &str, size: u64) -> String {
    format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n")
}

fn hashes_of(state: &State, path: &Path, name: &str) -> io::Result<Hashes> {
    let meta = fs::metadata(path)?;
    let mtime = meta.modified().ok();
    if let Some(h) = lock(&state.hashes).get(path) {
        if h.len == meta.len() && h.mtime == mtime {
            return Ok(h.clone());
        }
    }
    let ext = Path::new(name).extension().and_then(|e| e.to_str()).unwrap_or("");
    let lfs = meta.len() >= state.lfs_threshold || LFS_EXTENSIONS.contains(&ext);
    let h = if lfs {
        let mut f = File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let sha: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Hashes {
            len: meta.len(),
            mtime,
            blob_id: git_blob_id(lfs_pointer(&sha, meta.len()).as_bytes()),
            sha256: Some(sha),
        }
    } else {
        Hashes {
            len: meta.len(),
            mtime,
            sha256: None,
            blob_id: git_blob_id(&fs::read(path)?),
        }
    };
    lock(&state.hashes).insert(path.to_path_buf(), h.clone());
    if let Some(sha) = &h.sha256 {
        lock(&state.lfs_index).insert(sha.clone(), (path.to_path_buf(), name.to_string()));
    }
    Ok(h)
}

fn repo_files(state: &State, repo: &str) -> io::Result<Vec<ServedFile>> {
    let dir = repo_dir(state, repo).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such repo"))?;
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".git") || name == META_FILE {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out)?;
            } else {
                let rel = p.strip_prefix(base).unwrap_or(&p).to_string_lossy().replace('\\', "/");
                out.push((rel, p));
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(&dir, &dir, &mut found)?;
    found.sort();
    found
        .into_iter()
        .map(|(name, path)| {
            let hashes = hashes_of(state, &path, &name)?;
            Ok(ServedFile { name, path, hashes })
        })
        .collect()
}

fn commit_hash(repo: &str, files: &[ServedFile]) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(repo.as_bytes());
    for f in files {
        h.update(format!("\n{}\0{}", f.name, f.hashes.blob_id).as_bytes());
    }
    h.digest().to_string()
}

fn meta_of(state: &State, repo: &str, files: &[ServedFile]) -> ModelMeta {
    let mut meta = lock(&state.meta).get(repo).cloned().unwrap_or_else(|| {
        repo_dir(state, repo)
            .and_then(|d| fs::read(d.join(META_FILE)).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    });
    if meta.library_name.is_none() {
        let has = |ext: &str| files.iter().any(|f| f.name.ends_with(ext));
        meta.library_name = if has(".gguf") {
            Some("gguf".into())
        } else if has(".safetensors") {
            Some("safetensors".into())
        } else {
            None
        };
    }
    if let Some(lib) = &meta.library_name {
        if !meta.tags.contains(lib) {
            meta.tags.insert(0, lib.clone());
        }
    }
    if meta.last_modified.is_none() {
        meta.last_modified = Some("2024-01-01T00:00:00.000Z".into());
    }
    meta
}

/// A parsed request head.
struct Request {
    method: String,
    target: String,
    headers: HashMap<String, String>,
}

fn read_request(stream: &TcpStream) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = HashMap::new();
    let mut total = line.len();
    loop {
        let mut h = String::new();
        let n = reader.read_line(&mut h)?;
        total += n;
        if n == 0 || h == "\r\n" || h == "\n" || total > 64 * 1024 {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Some(Request {
        method,
        target,
        headers,
    }))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_params(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// A response to write.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    /// A file range `[start, end)`; `offset_base` is 0 (absolute offsets).
    File {
        path: PathBuf,
        start: u64,
        end: u64,
        name: String,
    },
}

impl Resp {
    fn json(status: u16, v: &Value) -> Resp {
        Resp {
            status,
            headers: vec![("Content-Type".into(), "application/json; charset=utf-8".into())],
            body: Body::Bytes(v.to_string().into_bytes()),
        }
    }
    fn error(status: u16, code: Option<&str>, msg: &str) -> Resp {
        let mut r = Resp::json(status, &json!({ "error": msg }));
        if let Some(c) = code {
            r.headers.push(("X-Error-Code".into(), c.into()));
            r.headers.push(("X-Error-Message".into(), msg.into()));
        }
        r
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

fn handle(mut stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let Some(req) = read_request(&stream)? else {
        return Ok(());
    };
    let resp = route(state, &req);
    let status = resp.status;
    let head_only = req.method == "HEAD";
    let sent = write_response(&mut stream, state, resp, head_only);
    lock(&state.log).push(RequestRecord {
        method: req.method.clone(),
        target: req.target.clone(),
        range: req.headers.get("range").cloned(),
        authorization: req.headers.get("authorization").cloned(),
        status,
        body_bytes: *sent.as_ref().unwrap_or(&0),
    });
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
    sent.map(|_| ())
}

fn authorized(state: &State, req: &Request) -> bool {
    match &state.token {
        None => true,
        Some(t) => req
            .headers
            .get("authorization")
            .is_some_and(|a| a == &format!("Bearer {t}")),
    }
}

fn route(state: &State, req: &Request) -> Resp {
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let segs: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let params = query_params(query);
    if req.method != "GET" && req.method != "HEAD" {
        return Resp::error(405, None, "method not allowed");
    }
    match segs.as_slice() {
        ["cdn-lfs", sha] => cdn(state, req, sha),
        _ if !authorized(state, req) => Resp::error(401, None, "Invalid credentials in Authorization header"),
        ["api", "models"] => search(state, &params),
        ["api", "models", org, name] => info(state, &format!("{org}/{name}"), "main", &params),
        ["api", "models", org, name, "revision", rev] => info(state, &format!("{org}/{name}"), rev, &params),
        ["api", "models", org, name, "tree", rev, dir @ ..] => {
            tree(state, &format!("{org}/{name}"), rev, &dir.join("/"), &params)
        }
        [org, name, "resolve", rev, file @ ..] if !file.is_empty() => {
            resolve(state, req, &format!("{org}/{name}"), rev, &file.join("/"))
        }
        _ => Resp::error(404, None, "Not Found"),
    }
}

fn all_repos(state: &State) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(orgs) = fs::read_dir(&state.root) else {
        return out;
    };
    for o in orgs.flatten().filter(|e| e.path().is_dir()) {
        let Ok(names) = fs::read_dir(o.path()) else { continue };
        for n in names.flatten().filter(|e| e.path().is_dir()) {
            let id = format!(
                "{}/{}",
                o.file_name().to_string_lossy(),
                n.file_name().to_string_lossy()
            );
            if !id.contains("/.") && !id.starts_with('.') {
                out.push(id);
            }
        }
    }
    out.sort();
    out
}

fn search(state: &State, params: &[(String, String)]) -> Resp {
    let get = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
    let mut hits = Vec::new();
    for id in all_repos(state) {
        let Ok(files) = repo_files(state, &id) else { continue };
        let meta = meta_of(state, &id, &files);
        if let Some(s) = get("search") {
            if !id.to_lowercase().contains(&s.to_lowercase()) {
                continue;
            }
        }
        if get("author").is_some_and(|a| !id.starts_with(&format!("{a}/"))) {
            continue;
        }
        let filters: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k == "filter")
            .map(|(_, v)| v.as_str())
            .collect();
        if !filters.iter().all(|f| meta.tags.iter().any(|t| t == f)) {
            continue;
        }
        if get("pipeline_tag").is_some_and(|p| meta.pipeline_tag.as_deref() != Some(p)) {
            continue;
        }
        hits.push((id, meta));
    }
    match get("sort") {
        Some("downloads") => hits.sort_by_key(|h| std::cmp::Reverse(h.1.downloads)),
        Some("likes") => hits.sort_by_key(|h| std::cmp::Reverse(h.1.likes)),
        Some("lastModified") => hits.sort_by(|a, b| b.1.last_modified.cmp(&a.1.last_modified)),
        _ => {}
    }
    if let Some(l) = get("limit").and_then(|l| l.parse::<usize>().ok()) {
        hits.truncate(l);
    }
    let out: Vec<Value> = hits
        .into_iter()
        .map(|(id, m)| {
            json!({
                "_id": format!("{:024x}", id.len()), "id": id, "modelId": id, "likes": m.likes, "downloads": m.downloads,
                "private": false, "tags": m.tags, "pipeline_tag": m.pipeline_tag, "library_name": m.library_name,
                "lastModified": m.last_modified, "createdAt": "2024-01-01T00:00:00.000Z",
            })
        })
        .collect();
    Resp::json(200, &Value::Array(out))
}

/// Listing of `repo` at `rev`, or the error response the real hub gives.
fn lookup(state: &State, repo: &str, rev: &str) -> Result<(Vec<ServedFile>, String), Resp> {
    let files = repo_files(state, repo).map_err(|_| Resp::error(401, Some("RepoNotFound"), "Repository not found"))?;
    let commit = commit_hash(repo, &files);
    if rev != "main" && rev != commit {
        return Err(Resp::error(
            404,
            Some("RevisionNotFound"),
            &format!("Invalid rev id: {rev}"),
        ));
    }
    Ok((files, commit))
}

fn info(state: &State, repo: &str, rev: &str, params: &[(String, String)]) -> Resp {
    let (files, commit) = match lookup(state, repo, rev) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let blobs = params.iter().any(|(k, v)| k == "blobs" && v == "true");
    let mut siblings: Vec<Value> = files
        .iter()
        .map(|f| {
            if !blobs {
                return json!({ "rfilename": f.name });
            }
            let mut s = json!({ "rfilename": f.name, "blobId": f.hashes.blob_id, "size": f.hashes.len });
            if let Some(sha) = &f.hashes.sha256 {
                s["size"] = json!(f.hashes.len);
                s["lfs"] =
                    json!({ "sha256": sha, "size": f.hashes.len, "pointerSize": lfs_pointer(sha, f.hashes.len).len() });
            }
            s
        })
        .collect();
    for extra in &lock(&state.faults).extra_names {
        siblings.push(json!({ "rfilename": extra, "blobId": git_blob_id(b"pwned\n"), "size": 6 }));
    }
    let meta = meta_of(state, repo, &files);
    Resp::json(
        200,
        &json!({
            "_id": format!("{:024x}", repo.len()), "id": repo, "modelId": repo, "author": repo.split('/').next(),
            "sha": commit, "lastModified": meta.last_modified, "private": false, "disabled": false, "gated": false,
            "downloads": meta.downloads, "likes": meta.likes, "tags": meta.tags, "pipeline_tag": meta.pipeline_tag,
            "library_name": meta.library_name, "siblings": siblings,
            "usedStorage": files.iter().map(|f| f.hashes.len).sum::<u64>(),
        }),
    )
}

/// `GET /api/models/{repo}/tree/{rev}[/{dir}][?recursive=true]`, as
/// `huggingface_hub.snapshot_download` lists files.
fn tree(state: &State, repo: &str, rev: &str, dir: &str, params: &[(String, String)]) -> Resp {
    let (files, _) = match lookup(state, repo, rev) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let recursive = params
        .iter()
        .any(|(k, v)| k == "recursive" && (v == "true" || v == "1"));
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{}/", dir.trim_end_matches('/'))
    };
    let mut dirs = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for f in files.iter().filter(|f| f.name.starts_with(&prefix)) {
        let rest = &f.name[prefix.len()..];
        // Every folder between `dir` and the file.
        let parts: Vec<&str> = rest.split('/').collect();
        for i in 1..parts.len() {
            if recursive || i == 1 {
                dirs.insert(format!("{prefix}{}", parts[..i].join("/")));
            }
        }
        if !recursive && parts.len() > 1 {
            continue;
        }
        let mut e = json!({ "type": "file", "oid": f.hashes.blob_id, "size": f.hashes.len, "path": f.name });
        if let Some(sha) = &f.hashes.sha256 {
            e["lfs"] = json!({ "oid": sha, "size": f.hashes.len, "pointerSize": lfs_pointer(sha, f.hashes.len).len() });
        }
        out.push(e);
    }
    for d in dirs {
        out.push(json!({ "type": "directory", "oid": git_blob_id(d.as_bytes()), "size": 0, "path": d }));
    }
    for extra in &lock(&state.faults).extra_names {
        out.push(json!({ "type": "file", "oid": git_blob_id(b"pwned\n"), "size": 6, "path": extra }));
    }
    Resp::json(200, &Value::Array(out))
}

fn resolve(state: &State, req: &Request, repo: &str, rev: &str, file: &str) -> Resp {
    let (files, commit) = match lookup(state, repo, rev) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut common = vec![
        ("X-Repo-Commit".to_string(), commit.clone()),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    if lock(&state.faults).extra_names.iter().any(|n| n == file) {
        common.push(("ETag".into(), format!("\"{}\"", git_blob_id(b"pwned\n"))));
        return Resp {
            status: 200,
            headers: common,
            body: Body::Bytes(b"pwned\n".to_vec()),
        };
    }
    let Some(f) = files.into_iter().find(|f| f.name == file) else {
        let mut r = Resp::error(
            404,
            Some("EntryNotFound"),
            &format!("{file} does not exist on \"{rev}\""),
        );
        r.headers.extend(common);
        return r;
    };
    if let Some(sha) = &f.hashes.sha256 {
        common.push(("X-Linked-Etag".into(), format!("\"{sha}\"")));
        common.push(("X-Linked-Size".into(), f.hashes.len.to_string()));
        common.push(("ETag".into(), format!("\"{}\"", f.hashes.blob_id)));
        common.push(("Location".into(), format!("{}/cdn-lfs/{sha}", state.cdn_base)));
        return Resp {
            status: 302,
            headers: common,
            body: Body::Bytes(Vec::new()),
        };
    }
    common.push(("ETag".into(), format!("\"{}\"", f.hashes.blob_id)));
    content(state, req, f.path, f.hashes.len, f.name, common)
}

fn cdn(state: &State, req: &Request, sha: &str) -> Resp {
    let found = lock(&state.lfs_index).get(sha).cloned();
    let found = found.or_else(|| {
        // Not listed yet (e.g. a fresh hub process): index every repo once.
        for id in all_repos(state) {
            let _ = repo_files(state, &id);
        }
        lock(&state.lfs_index).get(sha).cloned()
    });
    let Some((path, name)) = found else {
        return Resp::error(404, None, "Not Found");
    };
    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let headers = vec![
        ("ETag".to_string(), format!("\"{sha}\"")),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    content(state, req, path, len, name, headers)
}

/// A content response: status faults first, then `Range` handling.
fn content(
    state: &State,
    req: &Request,
    path: PathBuf,
    len: u64,
    name: String,
    mut headers: Vec<(String, String)>,
) -> Resp {
    if req.method == "GET" {
        let mut f = lock(&state.faults);
        let applies = f.only_file.as_ref().is_none_or(|o| *o == name);
        if applies && f.status_500_times > 0 {
            f.status_500_times -= 1;
            return Resp::error(500, None, "Internal Error (injected)");
        }
        if applies && f.status_429_times > 0 {
            f.status_429_times -= 1;
            let mut r = Resp::error(429, None, "Too Many Requests (injected)");
            r.headers.push(("Retry-After".into(), f.retry_after_secs.to_string()));
            return r;
        }
    }
    let mut status = 200;
    let (mut start, mut end) = (0, len);
    if let Some(range) = req.headers.get("range") {
        let spec = range.strip_prefix("bytes=").and_then(|r| r.split_once('-'));
        let parsed = spec.and_then(|(a, b)| {
            let a: u64 = a.trim().parse().ok()?;
            let b = if b.trim().is_empty() {
                len.checked_sub(1)?
            } else {
                b.trim().parse::<u64>().ok()?.min(len.checked_sub(1)?)
            };
            (a <= b).then_some((a, b + 1))
        });
        match parsed {
            Some((a, b)) => {
                status = 206;
                (start, end) = (a, b);
                headers.push(("Content-Range".into(), format!("bytes {a}-{}/{len}", b - 1)));
            }
            None => {
                headers.push(("Content-Range".into(), format!("bytes */{len}")));
                return Resp {
                    status: 416,
                    headers,
                    body: Body::Bytes(Vec::new()),
                };
            }
        }
    }
    Resp {
        status,
        headers,
        body: Body::File { path, start, end, name },
    }
}

/// Writes the response; returns body bytes written.
fn write_response(stream: &mut TcpStream, state: &State, resp: Resp, head_only: bool) -> io::Result<u64> {
    let len = match &resp.body {
        Body::Bytes(b) => b.len() as u64,
        Body::File { start, end, .. } => end - start,
    };
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {len}\r\nConnection: close\r\n\r\n"));
    stream.write_all(head.as_bytes())?;
    if head_only {
        return Ok(0);
    }
    match resp.body {
        Body::Bytes(b) => {
            stream.write_all(&b)?;
            Ok(b.len() as u64)
        }
        Body::File { path, start, end, name } => send_file(stream, state, &path, start, end, &name),
    }
}

fn send_file(stream: &mut TcpStream, state: &State, path: &Path, start: u64, end: u64, name: &str) -> io::Result<u64> {
    let (drop_at, corrupt_at, trickle) = {
        let mut f = lock(&state.faults);
        let applies = f.only_file.as_ref().is_none_or(|o| o == name);
        let mut drop_at = None;
        if let Some(at) = f
            .drop_at
            .filter(|&at| applies && f.drop_times > 0 && at >= start && at < end)
        {
            f.drop_times -= 1;
            drop_at = Some(at);
        }
        let mut corrupt_at = None;
        if let Some(at) = f
            .corrupt_at
            .filter(|&at| applies && f.corrupt_times > 0 && at >= start && at < end)
        {
            f.corrupt_times -= 1;
            corrupt_at = Some(at);
        }
        (drop_at, corrupt_at, f.trickle_bytes_per_sec.filter(|_| applies))
    };
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let stop = drop_at.unwrap_or(end);
    if corrupt_at.is_none() && trickle.is_none() {
        // Fast path (sendfile on Linux through std's io::copy specialisation).
        let sent = io::copy(&mut (&mut file).take(stop - start), stream)?;
        return Ok(sent);
    }
    let chunk = trickle.map(|r| (r / 20).max(1) as usize).unwrap_or(1 << 20);
    let mut buf = vec![0u8; chunk];
    let mut pos = start;
    while pos < stop {
        let n = ((stop - pos) as usize).min(chunk);
        file.read_exact(&mut buf[..n])?;
        if let Some(c) = corrupt_at.filter(|&c| c >= pos && c < pos + n as u64) {
            buf[(c - pos) as usize] ^= 0xff;
        }
        stream.write_all(&buf[..n])?;
        pos += n as u64;
        if trickle.is_some() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(pos - start)
}
