//! `mlxengine serve`: an OpenAI- and Ollama-compatible HTTP server over
//! MLXEngine's models.
//!
//! ```no_run
//! let config = mlxengine_server::ServerConfig {
//!     models: vec!["target/models/SmolLM2-135M-Instruct.Q4_1.gguf".into()],
//!     ..Default::default()
//! };
//! mlxengine_server::run(config)?; // serves until Ctrl-C / SIGTERM
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The engine is synchronous; async lives only here, at the edge. Each
//! loaded model runs on its own OS thread ([`worker`]) fed by a bounded
//! queue; handlers stream its events out as SSE (OpenAI) or NDJSON (Ollama).
//! A client that disconnects stops its generation.
#![warn(missing_docs)]

mod common;
pub mod error;
pub mod metrics;
pub mod models;
mod ollama;
mod openai;
pub mod resolve;
pub mod split;
pub mod worker;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::models::{ModelPool, PoolOptions};
use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The largest request body accepted (413 beyond it): room for a few images.
pub const BODY_LIMIT: usize = 32 << 20;

/// Environment variable read for the API key when [`ServerConfig::api_key`] is `None`.
pub const API_KEY_ENV: &str = "MLXENGINE_API_KEY";

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind (loopback by default).
    pub host: String,
    /// Port (0 picks a free one; the URL printed says which).
    pub port: u16,
    /// Models to load at start and keep loaded: paths, registry ids or repos.
    pub models: Vec<String>,
    /// Bearer key every endpoint but `/health` requires (`None`: the
    /// `MLXENGINE_API_KEY` variable if set, else no key is needed).
    pub api_key: Option<String>,
    /// Idle time after which a model loaded on demand is unloaded (`None`: never).
    pub keep_alive: Option<Duration>,
    /// Requests each model answers at once: the batch size of a text model,
    /// the number of copies of a vision or embedding model.
    pub parallel: usize,
    /// Requests that may wait per model before a 429.
    pub queue_depth: usize,
    /// Most models loaded at once (`None`: no limit); the least recently used
    /// idle on-demand model is unloaded to make room.
    pub max_loaded: Option<usize>,
    /// Origins allowed by CORS (`*` for any); empty: CORS off.
    pub cors: Vec<String>,
    /// Let clients' requests download models from the Hugging Face Hub.
    pub allow_pull: bool,
    /// Memory the loaded models may take together (`None`: no limit): a
    /// fixed size or a share of what the device has free at start (80% by
    /// default). Loading past it unloads idle on-demand models, least
    /// recently used first; a model that does not fit alone is refused.
    pub memory_budget: Option<engine_device::MemoryBudget>,
    /// The model split across the ranks of `mlxengine launch` (`None`:
    /// unsplit). Exactly one text `--model` is served then: rank 0 serves
    /// HTTP, the other ranks [`split::follow`] it.
    pub split: Option<engine_llm::Split>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 11435,
            models: Vec::new(),
            api_key: None,
            keep_alive: Some(Duration::from_secs(300)),
            parallel: 4,
            queue_depth: 32,
            max_loaded: None,
            cors: Vec::new(),
            allow_pull: false,
            memory_budget: Some(engine_device::MemoryBudget::default()),
            split: None,
        }
    }
}

/// Parses `--memory-budget`: a size (`8GB`, `512MiB`), a share of the free
/// memory (`90%`), or `none` for no limit.
pub fn parse_memory_budget(s: &str) -> Result<Option<engine_device::MemoryBudget>, String> {
    let s = s.trim();
    if matches!(s, "none" | "off" | "unlimited") {
        return Ok(None);
    }
    let bad = || format!("--memory-budget `{s}`: use a size such as 8GB or 512MiB, a share such as 90%, or none");
    if let Some(pct) = s.strip_suffix('%') {
        let p: f64 = pct.trim().parse().map_err(|_| bad())?;
        return engine_device::MemoryBudget::fraction(p / 100.0)
            .map(Some)
            .map_err(|e| format!("--memory-budget `{s}`: {e}"));
    }
    engine_device::MemoryBudget::parse(s).map(Some).map_err(|_| bad())
}

/// Parses a keep-alive such as `5m`, `30s`, `1h`, `300` (seconds) or `0`;
/// a negative one (`-1`, `-1m`), `never` and `forever` keep models loaded.
pub fn parse_keep_alive(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if matches!(s, "never" | "forever" | "inf") {
        return Ok(None);
    }
    if let Some(rest) = s.strip_prefix('-') {
        return parse_keep_alive(rest).map(|_| None);
    }
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("keep-alive `{s}` is not a duration; use e.g. 30s, 5m, 1h, 0 or -1 (never unload)"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("keep-alive `{s}`: unknown unit `{unit}`; use ms, s, m or h")),
    };
    Ok(Some(Duration::from_secs_f64(n * scale)))
}

/// Shared by every handler.
pub(crate) struct AppState {
    pub(crate) pool: Arc<ModelPool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) started_unix: u64,
    /// Models run on a GPU (their memory counts as `size_vram`).
    pub(crate) gpu: bool,
    api_key: Option<String>,
    /// Bound to loopback: only `localhost` Host headers are served.
    loopback: bool,
}

/// Serves `config` until Ctrl-C or SIGTERM (blocking: builds the runtime).
/// A split server's ranks other than 0 follow rank 0 instead, without HTTP.
pub fn run(config: ServerConfig) -> anyhow::Result<()> {
    if config.split.as_ref().is_some_and(|s| s.group.rank() != 0) {
        return split::follow(&config);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mlxengine-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, shutdown_signal()))
}

/// Resolves when the process gets Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Binds, prints `listening on http://ADDR` to stderr, loads the models
/// given and serves until `shutdown` resolves (or a model given fails to load).
pub async fn serve(config: ServerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let ip: IpAddr = match config.host.as_str() {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h
            .trim_matches(['[', ']'])
            .parse()
            .with_context(|| format!("--host {h} is not an IP address (use e.g. 127.0.0.1, ::1 or 0.0.0.0)"))?,
    };
    if let Some(s) = &config.split {
        if s.group.rank() != 0 {
            anyhow::bail!(
                "rank {} of a split server follows rank 0: start it with `run`",
                s.group.rank()
            );
        }
        split::only_model(&config.models)?;
    }
    let metrics = Arc::new(Metrics::default());
    let gpu = engine_mlx::gpu_available();
    let memory_budget = match config.memory_budget {
        Some(b) => {
            let device = tokio::task::spawn_blocking(engine_device::DeviceReport::detect)
                .await
                .context("reading the device's memory")?;
            let bytes = b.bytes(&device);
            tracing::info!(budget = %engine_device::format_size(bytes), "memory budget for loaded models");
            metrics
                .memory_budget_bytes
                .store(bytes, std::sync::atomic::Ordering::Relaxed);
            Some(bytes)
        }
        None => None,
    };
    let pool = Arc::new(ModelPool::new(
        resolve::Resolver::from_env(config.allow_pull).for_split(config.split.as_ref()),
        PoolOptions {
            parallel: config.parallel.max(1),
            queue_depth: config.queue_depth.max(1),
            keep_alive: config.keep_alive,
            max_loaded: config.max_loaded.map(|n| n.max(1)),
            memory_budget,
            split: config.split.clone(),
        },
        metrics.clone(),
    ));
    let models = config.models.clone();
    let registering = pool.clone();
    tokio::task::spawn_blocking(move || registering.register_preloaded(&models))
        .await
        .context("resolving the --model names")?
        .map_err(anyhow::Error::msg)?;
    if config.split.is_some() {
        for slot in pool.slots() {
            split::check_kind(&slot.name, slot.kind)?;
        }
    }
    let state = Arc::new(AppState {
        pool: pool.clone(),
        metrics,
        started_unix: common::unix_now(),
        gpu,
        api_key: config
            .api_key
            .clone()
            .or_else(|| std::env::var(API_KEY_ENV).ok())
            .filter(|k| !k.is_empty()),
        loopback: ip.is_loopback(),
    });
    let app = router(state, &config.cors)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, config.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    eprintln!("listening on http://{addr}");

    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    let loader = pool.clone();
    tokio::spawn(async move {
        match loader.load_preloaded().await {
            Ok(()) => tracing::info!("all models loaded"),
            Err(e) => {
                let _ = fatal_tx.send(e);
            }
        }
    });
    let reaper = pool.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            reaper.unload_idle();
        }
    });
    let (failed_tx, mut failed_rx) = tokio::sync::oneshot::channel::<String>();
    let stop = async move {
        tokio::select! {
            _ = shutdown => {},
            Ok(e) = fatal_rx => { let _ = failed_tx.send(e); },
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("serving")?;
    pool.clear();
    if let Ok(e) = failed_rx.try_recv() {
        anyhow::bail!("{e}");
    }
    Ok(())
}

fn router(state: Arc<AppState>, cors: &[String]) -> anyhow::Result<Router> {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/images/generations", post(openai::images_generations))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/version", get(ollama::version))
        .route("/", get(|| async { "mlxengine is running" }))
        .fallback(|req: Request| async move { ApiError::no_route(req.uri().path()) })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::method_not_allowed(req.method().as_str(), req.uri().path())
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state);
    if cors.is_empty() {
        return Ok(app);
    }
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let origin = if cors.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = cors
            .iter()
            .map(|o| o.parse().with_context(|| format!("--cors {o} is not a valid origin")))
            .collect::<anyhow::Result<Vec<header::HeaderValue>>>()?;
        AllowOrigin::list(list)
    };
    Ok(app.layer(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods(Any)
            .allow_headers(Any),
    ))
}

/// Whether a `Host` header names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default()
    };
    matches!(name.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "::1")
}

fn bearer_ok(headers: &HeaderMap, key: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
        return false;
    };
    // Compare in constant time for equal lengths.
    let (a, b) = (given.trim().as_bytes(), key.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every request: the DNS-rebinding guard, the API key, and the request counter.
async fn guard(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".into());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string);
    let response = if state.loopback && host.as_deref().is_some_and(|h| !is_loopback_host(h)) {
        ApiError::forbidden(format!(
            "Host `{}` is refused: this server listens on loopback and answers only localhost, 127.0.0.1 and [::1] \
             (a guard against DNS rebinding); bind another --host to serve other names",
            host.unwrap_or_default()
        ))
        .into_response()
    } else if endpoint != "/health"
        && req.method() != Method::OPTIONS
        && state.api_key.as_deref().is_some_and(|k| !bearer_ok(req.headers(), k))
    {
        ApiError::unauthorized("missing or wrong API key: send `Authorization: Bearer KEY` with the server's --api-key")
            .into_response()
    } else {
        next.run(req).await
    };
    state.metrics.record_request(&endpoint, response.status().as_u16());
    if let Some(kind) = response.extensions().get::<error::ErrorKind>() {
        state.metrics.record_error(kind.0);
    }
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let loading = state.pool.still_loading();
    if loading.is_empty() {
        return Json(json!({"status": "ok"})).into_response();
    }
    let mut res = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "loading", "reason": format!("loading model(s): {}", loading.join(", "))})),
    )
        .into_response();
    res.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(1));
    res
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let running = state.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], running).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_durations() {
        assert_eq!(parse_keep_alive("5m").unwrap(), Some(Duration::from_secs(300)));
        assert_eq!(parse_keep_alive("30s").unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(parse_keep_alive("90").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(parse_keep_alive("0").unwrap(), Some(Duration::ZERO));
        assert_eq!(parse_keep_alive("-1").unwrap(), None);
        assert_eq!(parse_keep_alive("-5m").unwrap(), None);
        assert!(parse_keep_alive("-x").is_err());
        assert!(parse_keep_alive("5 parsecs").is_err());
    }

    #[test]
    fn memory_budgets() {
        assert_eq!(parse_memory_budget("none").unwrap(), None);
        assert_eq!(
            parse_memory_budget("8GB").unwrap().unwrap().override_bytes,
            Some(8_000_000_000)
        );
        assert_eq!(parse_memory_budget("90%").unwrap().unwrap().fraction, 0.9);
        for bad in ["lots", "0%", "150%", "-3GB"] {
            let e = parse_memory_budget(bad).unwrap_err();
            assert!(e.contains("--memory-budget"), "{bad}: {e}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:11435",
            "[::1]:80",
            "[::1]",
            "LOCALHOST",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["evil.example", "evil.example:11435", "127.0.0.1.evil.example", "[::2]"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn bearer_keys() {
        let mut h = HeaderMap::new();
        assert!(!bearer_ok(&h, "k"));
        h.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        assert!(bearer_ok(&h, "k"));
        assert!(!bearer_ok(&h, "kk"));
        h.insert(header::AUTHORIZATION, "Basic k".parse().unwrap());
        assert!(!bearer_ok(&h, "k"));
    }
}
