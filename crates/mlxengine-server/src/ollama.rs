//! The Ollama API: `/api/chat`, `/api/generate`, `/api/embed` (and the older
//! `/api/embeddings`), `/api/tags`, `/api/ps`, `/api/show`, `/api/version`.
//!
//! Streams are NDJSON unless `"stream": false`. Errors use Ollama's shape,
//! `{"error": "message"}`. A request's `keep_alive` (a duration such as
//! `"10m"`, seconds, or negative for "never") sets how long its model stays
//! loaded after it, as in Ollama; with no prompt it only loads the model, or
//! unloads it with `keep_alive: 0`. Models given with `--model` stay loaded.
//! Unknown `options` are ignored.

use crate::common::{self, finish_reason_str, rfc3339, JsonBody, Sampling, StreamFormat};
use crate::error::ApiError;
use crate::models::{Slot, Use};
use crate::openai::input_texts;
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use engine_core::{ChatMessage, FinishReason, GenerationStats, ImageSource, Prompt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

type OllamaResult = Result<Response, ApiError>;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Options {
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    repeat_penalty: Option<f32>,
}

impl Options {
    fn sampling(self) -> Sampling {
        Sampling {
            // Negative: "no limit" (the server's default).
            max_tokens: self.num_predict.and_then(|n| usize::try_from(n).ok()),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            seed: self.seed.map(|s| s as u64),
            stop: self.stop.unwrap_or_default(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// A request's `keep_alive`: `None` when absent, `Some(None)` for "never unload".
fn keep_alive(value: Option<&Value>) -> Result<Option<Option<Duration>>, ApiError> {
    let bad = |why: String| ApiError::bad_param("keep_alive", why);
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(0.0);
            Ok(Some((secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))))
        }
        Some(Value::String(s)) => crate::parse_keep_alive(s).map(Some).map_err(bad),
        Some(other) => Err(bad(format!(
            "`keep_alive` must be a duration such as \"5m\" or a number of seconds, not {other}"
        ))),
    }
}

/// Answers a request without a prompt: loads the model, or with
/// `keep_alive: 0` unloads it, as Ollama does.
async fn load_or_unload(state: &AppState, model: &str, keep: Option<Option<Duration>>, chat: bool) -> OllamaResult {
    let (id, reason) = if keep == Some(Some(Duration::ZERO)) {
        let id = state.pool.unload_now(model)?.unwrap_or_else(|| model.to_string());
        (id, "unload")
    } else {
        let worker = state.pool.get(model, Use::Generate).await?;
        if let Some(k) = keep {
            state.pool.keep(&worker.id, k);
        }
        (worker.id.clone(), "load")
    };
    let mut body = json!({
        "model": id, "created_at": rfc3339(SystemTime::now()), "done": true, "done_reason": reason,
    });
    if chat {
        body["message"] = json!({"role": "assistant", "content": ""});
    } else {
        body["response"] = json!("");
    }
    Ok(Json(body).into_response())
}

fn refuse_format(format: Option<&Value>) -> Result<(), ApiError> {
    match format {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s.is_empty() => Ok(()),
        Some(_) => Err(ApiError::bad_param(
            "format",
            "`format` (JSON mode / structured outputs) is not supported: this server does not constrain output; \
             leave it out and ask for JSON in the prompt",
        )),
    }
}

fn decode_images(images: Vec<String>, slot_kind_vision: bool, model: &str) -> Result<Vec<ImageSource>, ApiError> {
    if !images.is_empty() && !slot_kind_vision {
        return Err(ApiError::bad_param(
            "images",
            format!("model `{model}` is text-only: it cannot take images"),
        ));
    }
    images
        .into_iter()
        .map(|b64| {
            if b64.starts_with("data:") {
                return Ok(ImageSource::Url(b64));
            }
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map(ImageSource::Bytes)
                .map_err(|e| ApiError::bad_param("images", format!("an image is not valid base64: {e}")))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Vec<InMessage>,
    #[serde(default = "default_true")]
    stream: bool,
    format: Option<Value>,
    tools: Option<Value>,
    #[serde(default)]
    options: Options,
    keep_alive: Option<Value>,
}

/// NDJSON lines of `/api/chat` or `/api/generate`.
struct Lines {
    model: String,
    chat: bool,
    started: Instant,
}

impl Lines {
    fn piece(&self, text: &str, done: bool) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("model".into(), json!(self.model));
        m.insert("created_at".into(), json!(rfc3339(SystemTime::now())));
        if self.chat {
            m.insert("message".into(), json!({"role": "assistant", "content": text}));
        } else {
            m.insert("response".into(), json!(text));
        }
        m.insert("done".into(), json!(done));
        m
    }

    fn last(&self, text: &str, finish_reason: FinishReason, stats: &GenerationStats) -> Value {
        let mut m = self.piece(text, true);
        let ns = |ms: f64| (ms * 1e6).round() as u64;
        let eval_ms = if stats.decode_tok_per_s > 0.0 {
            stats.generated_tokens.saturating_sub(1) as f64 / stats.decode_tok_per_s * 1e3
        } else {
            0.0
        };
        m.insert("done_reason".into(), json!(finish_reason_str(finish_reason)));
        m.insert("total_duration".into(), json!(self.started.elapsed().as_nanos() as u64));
        m.insert("load_duration".into(), json!(0));
        m.insert("prompt_eval_count".into(), json!(stats.prompt_tokens));
        m.insert("prompt_eval_duration".into(), json!(ns(stats.ttft_ms)));
        m.insert("eval_count".into(), json!(stats.generated_tokens));
        m.insert("eval_duration".into(), json!(ns(eval_ms)));
        Value::Object(m)
    }
}

impl StreamFormat for Lines {
    fn text(&mut self, text: &str) -> Vec<String> {
        if text.is_empty() {
            return vec![];
        }
        vec![format!("{}\n", Value::Object(self.piece(text, false)))]
    }

    fn done(&mut self, finish_reason: FinishReason, stats: &GenerationStats) -> Vec<String> {
        vec![format!("{}\n", self.last("", finish_reason, stats))]
    }

    fn error(&mut self, error: &ApiError) -> String {
        format!("{}\n", json!({"error": error.message}))
    }
}

/// Runs a generation for `/api/chat` or `/api/generate`; `make_prompt` builds
/// the prompt once the model (and whether it takes images) is known.
async fn run(
    state: &AppState,
    model: &str,
    stream: bool,
    chat: bool,
    sampling: Sampling,
    keep: Option<Option<Duration>>,
    make_prompt: impl FnOnce(&crate::worker::ModelWorker) -> Result<Prompt, ApiError>,
) -> OllamaResult {
    let started = Instant::now();
    let worker = state.pool.get(model, Use::Generate).await?;
    if let Some(k) = keep {
        state.pool.keep(&worker.id, k);
    }
    let prompt = make_prompt(&worker)?;
    let params = sampling.params(&worker.details.defaults);
    let mut rx = common::start(&worker, prompt, params)?;
    let lines = Lines {
        model: worker.id.clone(),
        chat,
        started,
    };
    if stream {
        let first = common::first_event(&mut rx).await?;
        return Ok(common::stream_response(
            first,
            rx,
            lines,
            "application/x-ndjson",
            state.metrics.clone(),
        ));
    }
    let done = common::collect(rx).await?;
    Ok(Json(lines.last(&done.text, done.finish_reason, &done.stats)).into_response())
}

/// `POST /api/chat`.
pub(crate) async fn chat(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<ChatRequest>, ApiError>,
) -> OllamaResult {
    let JsonBody(req) = body.map_err(ApiError::ollama)?;
    let result = async {
        refuse_format(req.format.as_ref())?;
        if req
            .tools
            .as_ref()
            .is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()))
        {
            return Err(ApiError::bad_param(
                "tools",
                "tool calling is not supported by this server yet",
            ));
        }
        let keep = keep_alive(req.keep_alive.as_ref())?;
        if req.messages.is_empty() {
            return load_or_unload(&state, &req.model, keep, true).await;
        }
        let messages = req.messages;
        let model = req.model.clone();
        run(
            &state,
            &req.model,
            req.stream,
            true,
            req.options.sampling(),
            keep,
            move |w| {
                let vision = w.kind == crate::resolve::ModelKind::Vision;
                let mut out = Vec::with_capacity(messages.len());
                for m in messages {
                    let mut msg = ChatMessage::new(m.role, m.content);
                    msg.images = decode_images(m.images, vision, &model)?;
                    out.push(msg);
                }
                Ok(Prompt::Chat(out))
            },
        )
        .await
    }
    .await;
    result.map_err(ApiError::ollama)
}

#[derive(Debug, Deserialize)]
pub(crate) struct GenerateRequest {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    #[serde(default)]
    images: Vec<String>,
    #[serde(default = "default_true")]
    stream: bool,
    format: Option<Value>,
    #[serde(default)]
    options: Options,
    keep_alive: Option<Value>,
}

/// `POST /api/generate`. An empty prompt loads the model and answers
/// `done_reason: "load"`, as Ollama does.
pub(crate) async fn generate(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<GenerateRequest>, ApiError>,
) -> OllamaResult {
    let JsonBody(req) = body.map_err(ApiError::ollama)?;
    let result = async {
        refuse_format(req.format.as_ref())?;
        let keep = keep_alive(req.keep_alive.as_ref())?;
        if req.prompt.is_empty() && req.images.is_empty() {
            return load_or_unload(&state, &req.model, keep, false).await;
        }
        let (prompt, system, raw, images, model) = (req.prompt, req.system, req.raw, req.images, req.model.clone());
        run(
            &state,
            &req.model,
            req.stream,
            false,
            req.options.sampling(),
            keep,
            move |w| {
                let vision = w.kind == crate::resolve::ModelKind::Vision;
                let images = decode_images(images, vision, &model)?;
                if raw {
                    if !images.is_empty() {
                        return Err(ApiError::bad_param(
                            "images",
                            "images need the chat template: leave `raw` off",
                        ));
                    }
                    return Ok(Prompt::Text(prompt));
                }
                let mut messages = Vec::new();
                if let Some(s) = system {
                    messages.push(ChatMessage::new("system", s));
                }
                let mut user = ChatMessage::new("user", prompt);
                user.images = images;
                messages.push(user);
                Ok(Prompt::Chat(messages))
            },
        )
        .await
    }
    .await;
    result.map_err(ApiError::ollama)
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmbedRequest {
    model: String,
    input: Option<Value>,
    /// `/api/embeddings` (older): one text.
    prompt: Option<String>,
    keep_alive: Option<Value>,
}

async fn embed_texts(
    state: &AppState,
    model: &str,
    texts: Vec<String>,
    keep: Option<Value>,
) -> Result<(String, engine_embed::EmbedOutput), ApiError> {
    let keep = keep_alive(keep.as_ref())?;
    let worker = state.pool.get(model, Use::Embed).await?;
    if let Some(k) = keep {
        state.pool.keep(&worker.id, k);
    }
    let out = worker
        .embed(texts)
        .await
        .map_err(|e| common::submit_error(&worker, e))??;
    Ok((worker.id.clone(), out))
}

/// `POST /api/embed`.
pub(crate) async fn embed(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<EmbedRequest>, ApiError>,
) -> OllamaResult {
    let JsonBody(req) = body.map_err(ApiError::ollama)?;
    let started = Instant::now();
    let result = async {
        let input = req
            .input
            .ok_or_else(|| ApiError::bad_param("input", "`input` is required"))?;
        let texts = input_texts(&input, "input")?;
        let (id, out) = embed_texts(&state, &req.model, texts, req.keep_alive).await?;
        Ok(Json(json!({
            "model": id,
            "embeddings": out.vectors,
            "total_duration": started.elapsed().as_nanos() as u64,
            "load_duration": 0,
            "prompt_eval_count": out.token_counts.iter().sum::<usize>(),
        }))
        .into_response())
    }
    .await;
    result.map_err(ApiError::ollama)
}

/// `POST /api/embeddings` (Ollama's older endpoint: `prompt` → `embedding`).
pub(crate) async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<EmbedRequest>, ApiError>,
) -> OllamaResult {
    let JsonBody(req) = body.map_err(ApiError::ollama)?;
    let result = async {
        let prompt = req
            .prompt
            .ok_or_else(|| ApiError::bad_param("prompt", "`prompt` is required"))?;
        let (_, out) = embed_texts(&state, &req.model, vec![prompt], req.keep_alive).await?;
        let vector = out.vectors.into_iter().next().unwrap_or_default();
        Ok(Json(json!({"embedding": vector})).into_response())
    }
    .await;
    result.map_err(ApiError::ollama)
}

fn disk_size(path: &std::path::Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn details(slot: &Slot) -> Value {
    let format = if slot.path.extension().is_some_and(|e| e == "gguf") {
        "gguf"
    } else {
        "safetensors"
    };
    let (family, quant) = match slot.loaded() {
        Some(w) => (
            w.details.architecture.clone(),
            w.details.quantization.clone().unwrap_or_default(),
        ),
        None => (String::new(), String::new()),
    };
    json!({
        "parent_model": "", "format": format, "family": family, "families": [family],
        "parameter_size": "", "quantization_level": quant,
    })
}

fn entry(slot: &Slot) -> serde_json::Map<String, Value> {
    let modified = std::fs::metadata(&slot.path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::now());
    let mut m = serde_json::Map::new();
    m.insert("name".into(), json!(slot.id));
    m.insert("model".into(), json!(slot.id));
    m.insert("modified_at".into(), json!(rfc3339(modified)));
    m.insert("size".into(), json!(disk_size(&slot.path)));
    m.insert("digest".into(), json!(""));
    m.insert("details".into(), details(slot));
    m
}

/// `GET /api/tags`: the served models.
pub(crate) async fn tags(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = state.pool.slots().iter().map(|s| Value::Object(entry(s))).collect();
    Json(json!({"models": models}))
}

/// `GET /api/ps`: the loaded models.
pub(crate) async fn ps(State(state): State<Arc<AppState>>) -> Json<Value> {
    let models: Vec<Value> = state
        .pool
        .slots()
        .iter()
        .filter(|s| s.loaded().is_some())
        .map(|s| {
            let mut m = entry(s);
            // Ollama writes "forever" as a date far in the future.
            let forever = std::time::UNIX_EPOCH + Duration::from_secs(253_402_300_799);
            let expires = s.expires_at(state.pool.default_keep_alive()).unwrap_or(forever);
            let resident = s.loaded().map(|w| w.memory_bytes).unwrap_or(0);
            m.insert("expires_at".into(), json!(rfc3339(expires)));
            m.insert("size".into(), json!(resident));
            m.insert("size_vram".into(), json!(if state.gpu { resident } else { 0 }));
            Value::Object(m)
        })
        .collect();
    Json(json!({"models": models}))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ShowRequest {
    model: Option<String>,
    name: Option<String>,
}

/// `POST /api/show`: a served model's details (loads it).
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<ShowRequest>, ApiError>,
) -> OllamaResult {
    let JsonBody(req) = body.map_err(ApiError::ollama)?;
    let result = async {
        let name = req
            .model
            .or(req.name)
            .ok_or_else(|| ApiError::bad_param("model", "`model` is required"))?;
        let purpose = match state.pool.find(&name) {
            Some(s) if !s.kind.generates() => Use::Embed,
            _ => Use::Generate,
        };
        let worker = state.pool.get(&name, purpose).await?;
        let slot = state
            .pool
            .find(&worker.id)
            .ok_or_else(|| ApiError::model_not_found(format!("model `{name}` was unloaded")))?;
        let arch = &worker.details.architecture;
        let capabilities: Vec<&str> = match worker.kind {
            crate::resolve::ModelKind::Text => vec!["completion"],
            crate::resolve::ModelKind::Vision => vec!["completion", "vision"],
            crate::resolve::ModelKind::Embedding => vec!["embedding"],
            crate::resolve::ModelKind::Image => vec!["image"],
        };
        let mut info = serde_json::Map::new();
        info.insert("general.architecture".into(), json!(arch));
        info.insert(format!("{arch}.context_length"), json!(worker.details.context_length));
        if let Some(d) = worker.details.dimensions {
            info.insert(format!("{arch}.embedding_length"), json!(d));
        }
        Ok(Json(json!({
            "modelfile": "", "parameters": "", "template": "",
            "details": details(&slot),
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": entry(&slot)["modified_at"],
        }))
        .into_response())
    }
    .await;
    result.map_err(ApiError::ollama)
}

/// `GET /api/version`.
pub(crate) async fn version() -> Json<Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION")}))
}
