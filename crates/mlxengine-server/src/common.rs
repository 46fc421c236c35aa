//! What the OpenAI and Ollama endpoints share: the JSON body extractor,
//! starting a generation, collecting or streaming its events.

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::worker::{GenEvent, ModelWorker, SubmitError};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use engine_core::{FinishReason, GenerateParams, GenerationStats, Prompt, StreamEvent};
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A JSON body: bad JSON or a wrong field is a 400 naming the problem, a body
/// over the limit a 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(crate::BODY_LIMIT)
            } else {
                ApiError::bad_request(format!("cannot read the request body: {r}"))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Queues a generation on `worker`.
pub fn start(
    worker: &ModelWorker,
    prompt: Prompt,
    params: GenerateParams,
) -> Result<mpsc::UnboundedReceiver<GenEvent>, ApiError> {
    params.validate()?;
    worker.generate(prompt, params).map_err(|e| submit_error(worker, e))
}

/// The HTTP error of a job that was not queued.
pub fn submit_error(worker: &ModelWorker, e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull(depth) => ApiError::queue_full(&worker.id, depth),
        SubmitError::Gone => {
            ApiError::unavailable(format!("the worker of `{}` has stopped; restart the server", worker.id))
        }
    }
}

/// A generation run to its end.
pub struct Finished {
    /// All the text.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Its statistics.
    pub stats: GenerationStats,
}

/// Waits for every event of a generation.
pub async fn collect(mut rx: mpsc::UnboundedReceiver<GenEvent>) -> Result<Finished, ApiError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev? {
            StreamEvent::Text { text: t, .. } => text.push_str(&t),
            StreamEvent::Done { finish_reason, stats } => {
                return Ok(Finished {
                    text,
                    finish_reason,
                    stats,
                })
            }
        }
    }
    Err(ApiError::internal(
        "the generation ended without finishing (the model worker stopped)",
    ))
}

/// The first event of a generation, so that an error before any output (a
/// prompt too long, a bad image) is answered with its status, not in a stream.
pub async fn first_event(rx: &mut mpsc::UnboundedReceiver<GenEvent>) -> Result<StreamEvent, ApiError> {
    match rx.recv().await {
        Some(ev) => Ok(ev?),
        None => Err(ApiError::internal(
            "the generation ended without output (the model worker stopped)",
        )),
    }
}

/// How a streaming endpoint writes its frames.
pub trait StreamFormat: Send + 'static {
    /// Frames for new text (none for empty text).
    fn text(&mut self, text: &str) -> Vec<String>;
    /// The closing frames.
    fn done(&mut self, finish_reason: FinishReason, stats: &GenerationStats) -> Vec<String>;
    /// A frame reporting an error after the stream started.
    fn error(&mut self, error: &ApiError) -> String;
}

/// A streamed response: `first` (already received) and then the rest of the
/// events, written by `format`. When the client disconnects, the body (and
/// with it the receiver) is dropped, which stops the generation.
pub fn stream_response<F: StreamFormat>(
    first: StreamEvent,
    rx: mpsc::UnboundedReceiver<GenEvent>,
    format: F,
    content_type: &'static str,
    metrics: Arc<Metrics>,
) -> Response {
    struct State<F> {
        rx: mpsc::UnboundedReceiver<GenEvent>,
        format: F,
        metrics: Arc<Metrics>,
        pending: VecDeque<String>,
        ended: bool,
    }
    fn feed<F: StreamFormat>(s: &mut State<F>, ev: Option<GenEvent>) {
        match ev {
            Some(Ok(StreamEvent::Text { text, .. })) => s.pending.extend(s.format.text(&text)),
            Some(Ok(StreamEvent::Done { finish_reason, stats })) => {
                s.pending.extend(s.format.done(finish_reason, &stats));
                s.ended = true;
            }
            Some(Err(e)) => {
                let e = ApiError::from(e);
                s.metrics.record_error(e.metric_kind());
                let frame = s.format.error(&e);
                s.pending.push_back(frame);
                s.ended = true;
            }
            None => {
                let e = ApiError::internal("the generation ended without finishing");
                s.metrics.record_error(e.metric_kind());
                let frame = s.format.error(&e);
                s.pending.push_back(frame);
                s.ended = true;
            }
        }
    }
    let mut state = State {
        rx,
        format,
        metrics,
        pending: VecDeque::new(),
        ended: false,
    };
    feed(&mut state, Some(Ok(first)));
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(frame) = s.pending.pop_front() {
                return Some((Ok::<_, std::convert::Infallible>(Bytes::from(frame)), s));
            }
            if s.ended {
                return None;
            }
            let ev = s.rx.recv().await;
            feed(&mut s, ev);
        }
    });
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `time` as RFC 3339 in UTC (`2024-05-01T12:00:00.123Z`), as Ollama writes times.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    let d = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// OpenAI's `finish_reason` (and Ollama's `done_reason`).
pub fn finish_reason_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
    }
}

/// Generation parameters from a request's fields over the model's defaults.
#[derive(Debug, Default, Clone)]
pub struct Sampling {
    /// Most new tokens.
    pub max_tokens: Option<usize>,
    /// Temperature.
    pub temperature: Option<f32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Top-k.
    pub top_k: Option<usize>,
    /// Min-p.
    pub min_p: Option<f32>,
    /// Repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Seed.
    pub seed: Option<u64>,
    /// Stop strings.
    pub stop: Vec<String>,
}

/// New tokens when a request does not say.
pub const DEFAULT_MAX_TOKENS: usize = 2048;

impl Sampling {
    /// The parameters, over `defaults` (the model's generation_config).
    pub fn params(self, defaults: &GenerateParams) -> GenerateParams {
        GenerateParams {
            max_tokens: self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            min_p: self.min_p.unwrap_or(defaults.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            seed: self.seed,
            stop: self.stop,
            ..defaults.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
