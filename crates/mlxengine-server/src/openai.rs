//! The OpenAI API: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/models`.

use crate::common::{self, finish_reason_str, JsonBody, Sampling, StreamFormat};
use crate::error::ApiError;
use crate::models::Use;
use crate::resolve::ModelKind;
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use engine_core::{ChatMessage, FinishReason, GenerationStats, ImageSource, Prompt};
use image::ImageEncoder as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Fields shared by chat and text completions.
#[derive(Debug, Deserialize)]
pub(crate) struct SamplingFields {
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    n: Option<u32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    logprobs: Option<Value>,
    /// Extensions (as vLLM and llama.cpp accept them).
    top_k: Option<usize>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
}

impl SamplingFields {
    fn sampling(self) -> Result<Sampling, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_param(
                "n",
                "only n = 1 is supported: send one request per choice",
            ));
        }
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::bad_param(
                    name,
                    format!("{name} is not supported; use `repetition_penalty` (1.0 is off) instead"),
                ));
            }
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| v != &Value::Bool(false) && !v.is_null())
        {
            return Err(ApiError::bad_param("logprobs", "logprobs are not supported"));
        }
        Ok(Sampling {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            // Negative seeds (some clients send them) keep their bits.
            seed: self.seed.map(|s| s as u64),
            stop: self.stop.map(Stop::into_vec).unwrap_or_default(),
        })
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    response_format: Option<Value>,
    tools: Option<Value>,
    #[serde(flatten)]
    sampling: SamplingFields,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ImageUrl {
    Object { url: String },
    Plain(String),
}

/// A unique-enough id for responses.
pub(crate) fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:04x}", common::unix_now())
}

fn refuse_response_format(format: Option<&Value>) -> Result<(), ApiError> {
    match format {
        None | Some(Value::Null) => Ok(()),
        Some(f) if f.get("type").and_then(Value::as_str) == Some("text") => Ok(()),
        Some(f) => Err(ApiError::bad_param(
            "response_format",
            format!(
                "response_format {} is not supported: this server does not constrain output to JSON; \
                 leave response_format out (or use {{\"type\": \"text\"}}) and ask for JSON in the prompt",
                f.get("type")
                    .and_then(Value::as_str)
                    .map(|t| format!("`{t}`"))
                    .unwrap_or_else(|| f.to_string())
            ),
        )),
    }
}

/// Converts OpenAI messages to the engine's.
fn chat_messages(messages: Vec<InMessage>, kind: ModelKind, model: &str) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_param(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let role = if m.role == "developer" {
            "system".to_string()
        } else {
            m.role
        };
        let mut msg = ChatMessage::new(role, "");
        match m.content {
            None => {}
            Some(Content::Text(t)) => msg.content = t,
            Some(Content::Parts(parts)) => {
                let mut texts = Vec::new();
                for part in parts {
                    match part {
                        Part::Text { text } => texts.push(text),
                        Part::ImageUrl { image_url } => {
                            let url = match image_url {
                                ImageUrl::Object { url } | ImageUrl::Plain(url) => url,
                            };
                            if kind != ModelKind::Vision {
                                return Err(ApiError::bad_param(
                                    &format!("messages[{i}].content"),
                                    format!("model `{model}` is text-only: it cannot take images (serve a vision-language model)"),
                                ));
                            }
                            if !url.starts_with("data:") {
                                return Err(ApiError::bad_param(
                                    &format!("messages[{i}].content"),
                                    "only `data:image/...;base64,` image URLs are accepted; the server does not fetch remote URLs",
                                ));
                            }
                            msg.images.push(ImageSource::Url(url));
                        }
                    }
                }
                msg.content = texts.join("\n");
            }
        }
        out.push(msg);
    }
    Ok(out)
}

fn usage(stats: &GenerationStats) -> Value {
    json!({
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.generated_tokens,
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
    })
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    refuse_response_format(req.response_format.as_ref())?;
    if req
        .tools
        .as_ref()
        .is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(ApiError::bad_param(
            "tools",
            "tool calling is not supported by this server yet",
        ));
    }
    let sampling = req.sampling.sampling()?;
    let worker = state.pool.get(&req.model, Use::Generate).await?;
    let messages = chat_messages(req.messages, worker.kind, &worker.id)?;
    let params = sampling.params(&worker.details.defaults);
    let mut rx = common::start(&worker, Prompt::Chat(messages), params)?;
    let id = response_id("chatcmpl");
    let created = common::unix_now();
    if req.stream {
        let first = common::first_event(&mut rx).await?;
        let format = ChatChunks {
            id,
            created,
            model: worker.id.clone(),
            include_usage: req.stream_options.is_some_and(|o| o.include_usage),
            sent_role: false,
            text_completion: false,
        };
        return Ok(common::stream_response(
            first,
            rx,
            format,
            "text/event-stream",
            state.metrics.clone(),
        ));
    }
    let done = common::collect(rx).await?;
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": worker.id,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "logprobs": null,
            "finish_reason": finish_reason_str(done.finish_reason),
        }],
        "usage": usage(&done.stats),
    }))
    .into_response())
}

/// SSE chunks of a chat (or, with `text_completion`, a text) completion.
struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    sent_role: bool,
    text_completion: bool,
}

impl ChatChunks {
    fn chunk(&self, choice: Value) -> String {
        let object = if self.text_completion {
            "text_completion"
        } else {
            "chat.completion.chunk"
        };
        let v = json!({
            "id": self.id, "object": object, "created": self.created, "model": self.model,
            "choices": [choice],
        });
        format!("data: {v}\n\n")
    }
}

impl StreamFormat for ChatChunks {
    fn text(&mut self, text: &str) -> Vec<String> {
        if self.text_completion {
            if text.is_empty() {
                return vec![];
            }
            return vec![self.chunk(json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null}))];
        }
        let mut frames = Vec::new();
        if !self.sent_role {
            self.sent_role = true;
            frames.push(self.chunk(
                json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
            ));
        }
        if !text.is_empty() {
            frames.push(
                self.chunk(json!({"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null})),
            );
        }
        frames
    }

    fn done(&mut self, finish_reason: FinishReason, stats: &GenerationStats) -> Vec<String> {
        let mut frames = self.text("");
        let reason = finish_reason_str(finish_reason);
        frames.push(if self.text_completion {
            self.chunk(json!({"index": 0, "text": "", "logprobs": null, "finish_reason": reason}))
        } else {
            self.chunk(json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}))
        });
        if self.include_usage {
            let object = if self.text_completion {
                "text_completion"
            } else {
                "chat.completion.chunk"
            };
            let v = json!({
                "id": self.id, "object": object, "created": self.created, "model": self.model,
                "choices": [], "usage": usage(stats),
            });
            frames.push(format!("data: {v}\n\n"));
        }
        frames.push("data: [DONE]\n\n".into());
        frames
    }

    fn error(&mut self, error: &ApiError) -> String {
        format!("data: {}\n\n", error.body())
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    model: String,
    prompt: Value,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    echo: Option<bool>,
    suffix: Option<String>,
    #[serde(flatten)]
    sampling: SamplingFields,
}

/// `POST /v1/completions`: raw text in, no chat template.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<CompletionRequest>,
) -> Result<Response, ApiError> {
    let prompt = match &req.prompt {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        _ => {
            return Err(ApiError::bad_param(
                "prompt",
                "`prompt` must be a string (or a list of one string; token arrays and batches are not supported)",
            ))
        }
    };
    if req.echo == Some(true) {
        return Err(ApiError::bad_param("echo", "echo is not supported"));
    }
    if req.suffix.is_some() {
        return Err(ApiError::bad_param(
            "suffix",
            "suffix (fill-in-the-middle) is not supported",
        ));
    }
    let mut sampling = req.sampling.sampling()?;
    // OpenAI's default for the legacy endpoint.
    sampling.max_tokens = sampling.max_tokens.or(Some(16));
    let worker = state.pool.get(&req.model, Use::Generate).await?;
    let params = sampling.params(&worker.details.defaults);
    let mut rx = common::start(&worker, Prompt::Text(prompt), params)?;
    let id = response_id("cmpl");
    let created = common::unix_now();
    if req.stream {
        let first = common::first_event(&mut rx).await?;
        let format = ChatChunks {
            id,
            created,
            model: worker.id.clone(),
            include_usage: req.stream_options.is_some_and(|o| o.include_usage),
            sent_role: true,
            text_completion: true,
        };
        return Ok(common::stream_response(
            first,
            rx,
            format,
            "text/event-stream",
            state.metrics.clone(),
        ));
    }
    let done = common::collect(rx).await?;
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": worker.id,
        "choices": [{
            "index": 0,
            "text": done.text,
            "logprobs": null,
            "finish_reason": finish_reason_str(done.finish_reason),
        }],
        "usage": usage(&done.stats),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingRequest {
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<Value>,
}

/// The texts of an embedding request: a string or a list of strings.
pub(crate) fn input_texts(input: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let texts = match input {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()
        }
        _ => {
            return Err(ApiError::bad_param(
                field,
                format!("`{field}` must be a string or a list of strings (token arrays are not supported)"),
            ))
        }
    };
    if texts.is_empty() {
        return Err(ApiError::bad_param(field, format!("`{field}` must not be empty")));
    }
    Ok(texts)
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    if req.dimensions.as_ref().is_some_and(|d| !d.is_null()) {
        return Err(ApiError::bad_param(
            "dimensions",
            "`dimensions` is not supported: the model's vectors have a fixed width (leave it out)",
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_param(
                "encoding_format",
                format!("encoding_format `{other}` is not supported; use `float` or `base64`"),
            ))
        }
    };
    let texts = input_texts(&req.input, "input")?;
    let worker = state.pool.get(&req.model, Use::Embed).await?;
    let out = worker
        .embed(texts)
        .await
        .map_err(|e| common::submit_error(&worker, e))??;
    let tokens: usize = out.token_counts.iter().sum();
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": worker.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ImagesRequest {
    model: String,
    prompt: String,
    n: Option<usize>,
    size: Option<String>,
    response_format: Option<String>,
    /// Accepted and ignored, as the OpenAI API documents for non-DALL·E models.
    #[allow(dead_code)]
    user: Option<String>,
    // Extensions (diffusers' names).
    negative_prompt: Option<String>,
    num_inference_steps: Option<usize>,
    guidance_scale: Option<f32>,
    seed: Option<u64>,
    scheduler: Option<String>,
}

/// Most images one request may ask for.
const MAX_IMAGES: usize = 8;

/// `WxH` as OpenAI writes sizes.
fn parse_size(size: &str) -> Result<(usize, usize), ApiError> {
    let bad = || {
        ApiError::bad_param(
            "size",
            format!("size `{size}` is not WIDTHxHEIGHT (e.g. 512x512, multiples of 8)"),
        )
    };
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 || w % 8 != 0 || h % 8 != 0 || w > 4096 || h > 4096 {
        return Err(ApiError::bad_param(
            "size",
            format!("size {w}x{h}: width and height must be multiples of 8 between 8 and 4096"),
        ));
    }
    Ok((w, h))
}

/// `POST /v1/images/generations`: PNGs as `b64_json` (there are no URLs to
/// serve them from). Beyond OpenAI's fields: `negative_prompt`,
/// `num_inference_steps`, `guidance_scale`, `seed`, `scheduler`.
pub(crate) async fn images_generations(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ImagesRequest>,
) -> Result<Response, ApiError> {
    match req.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some(other) => {
            return Err(ApiError::bad_param(
                "response_format",
                format!("response_format `{other}` is not supported: images come back as `b64_json`"),
            ))
        }
    }
    let n = req.n.unwrap_or(1);
    if n == 0 || n > MAX_IMAGES {
        return Err(ApiError::bad_param(
            "n",
            format!("n must be between 1 and {MAX_IMAGES}"),
        ));
    }
    if req.prompt.trim().is_empty() {
        return Err(ApiError::bad_param("prompt", "`prompt` is empty"));
    }
    let worker = state.pool.get(&req.model, Use::Draw).await?;
    let mut r = engine_core::ImageRequest::new(req.prompt);
    if let Some(size) = &req.size {
        (r.width, r.height) = parse_size(size)?;
    }
    r.n = n;
    r.negative_prompt = req.negative_prompt;
    if let Some(steps) = req.num_inference_steps {
        r.steps = steps;
    }
    if let Some(g) = req.guidance_scale {
        r.guidance = g;
    }
    if let Some(seed) = req.seed {
        r.seed = seed;
    }
    r.scheduler = req.scheduler;
    let images = worker.image(r).await.map_err(|e| common::submit_error(&worker, e))??;
    let mut data = Vec::with_capacity(images.len());
    for img in &images {
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(
                &img.to_rgb8(),
                img.width as u32,
                img.height as u32,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| ApiError::internal(format!("encoding the PNG failed: {e}")))?;
        data.push(json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(png)}));
    }
    Ok(Json(json!({"created": common::unix_now(), "data": data})).into_response())
}

/// `GET /v1/models`.
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let created = state.started_unix;
    let data: Vec<Value> = state
        .pool
        .slots()
        .iter()
        .map(|s| json!({"id": s.id, "object": "model", "created": created, "owned_by": "mlxengine"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_sizes() {
        assert_eq!(parse_size("512x768").unwrap(), (512, 768));
        assert_eq!(parse_size("64X64").unwrap(), (64, 64));
        for bad in ["512", "512x", "x512", "65x64", "0x64", "8192x8192", "axb", "-8x8"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_parts_become_image_sources() {
        let msgs: Vec<InMessage> = serde_json::from_value(json!([
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
            ]}
        ]))
        .unwrap();
        let out = chat_messages(msgs, ModelKind::Vision, "m").unwrap();
        assert_eq!(out[0].role, "system");
        assert_eq!(out[1].content, "What is this?");
        assert_eq!(
            out[1].images,
            vec![ImageSource::Url("data:image/png;base64,AAAA".into())]
        );
    }

    #[test]
    fn text_models_refuse_images_and_json_mode_is_refused() {
        let msgs: Vec<InMessage> = serde_json::from_value(json!([
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
        ]))
        .unwrap();
        let e = chat_messages(msgs, ModelKind::Text, "m").unwrap_err();
        assert!(e.message.contains("text-only"), "{e}");
        let e = refuse_response_format(Some(&json!({"type": "json_object"}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
        assert!(refuse_response_format(Some(&json!({"type": "text"}))).is_ok());
    }

    #[test]
    fn a_stream_ends_with_usage_and_done_or_an_error_event() {
        let mut f = ChatChunks {
            id: "id".into(),
            created: 0,
            model: "m".into(),
            include_usage: true,
            sent_role: false,
            text_completion: false,
        };
        let first = f.text("Hi");
        assert_eq!(first.len(), 2, "role chunk, then content");
        let stats = GenerationStats {
            prompt_tokens: 3,
            generated_tokens: 1,
            ..Default::default()
        };
        let end = f.done(FinishReason::Eos, &stats);
        assert!(end[0].contains("\"finish_reason\":\"stop\""), "{}", end[0]);
        assert!(
            end[1].contains("\"total_tokens\":4") && end[1].contains("\"choices\":[]"),
            "{}",
            end[1]
        );
        assert_eq!(end[2], "data: [DONE]\n\n");
        let e = f.error(&ApiError::internal("backend error: boom"));
        let v: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(v["error"]["message"], "backend error: boom");
    }

    #[test]
    fn stop_and_max_tokens_fields() {
        let f: SamplingFields =
            serde_json::from_value(json!({"stop": "x", "max_completion_tokens": 5, "max_tokens": 9})).unwrap();
        let s = f.sampling().unwrap();
        assert_eq!(s.stop, vec!["x"]);
        assert_eq!(s.max_tokens, Some(5));
        let f: SamplingFields = serde_json::from_value(json!({"stop": ["a", "b"], "n": 2})).unwrap();
        assert!(f.sampling().is_err());
    }
}
