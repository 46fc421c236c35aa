//! Errors a client sees: OpenAI-shaped JSON with the status that fits.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use engine_core::EngineError;
use serde_json::json;

/// An error answered to a client: `{"error": {"message", "type", "param", "code"}}`
/// (the OpenAI shape) with `status`; Ollama endpoints render it as Ollama's
/// `{"error": "message"}` ([`ApiError::ollama`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
    /// OpenAI's error `type` (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// A machine-readable code (`model_not_found`, ...).
    pub code: Option<&'static str>,
    /// Seconds a client should wait before retrying (429, 503).
    pub retry_after: Option<u64>,
    /// Render as Ollama's `{"error": "message"}`.
    ollama: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            ollama: false,
        }
    }

    /// 400: a malformed request or an unsupported field.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the field at fault.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self::bad_request(message).with_param(param)
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message);
        e.code = Some("invalid_api_key");
        e
    }

    /// 403: refused (DNS-rebinding guard).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    /// 404: the model is not served.
    pub fn model_not_found(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message);
        e.code = Some("model_not_found");
        e.param = Some("model".into());
        e
    }

    /// 404: no such endpoint.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no endpoint {path}; see `GET /v1/models`, `/api/tags`, `/health`"),
        )
    }

    /// 405: the endpoint exists but not for this method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{path} does not take {method} requests"),
        )
    }

    /// 413: the body is larger than the limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is larger than the server's limit of {limit} bytes; send smaller images or fewer inputs"),
        )
    }

    /// 429: the model's queue is full.
    pub fn queue_full(model: &str, depth: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("model `{model}` has {depth} requests queued, its limit; retry later"),
        );
        e.retry_after = Some(1);
        e.code = Some("queue_full");
        e
    }

    /// 503: not ready (a model is loading, or its worker is gone).
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.retry_after = Some(1);
        e
    }

    /// 503 without a retry: the model does not fit the memory budget even
    /// with every other model unloaded.
    pub fn insufficient_memory(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message);
        e.code = Some("insufficient_memory");
        e
    }

    /// The kind counted by `mlxengine_errors_total`: the `code` when there
    /// is one (`queue_full`, `model_not_found`, ...), else the `type`.
    pub fn metric_kind(&self) -> &'static str {
        self.code.unwrap_or(self.kind)
    }

    /// 500: the engine failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The same error with `param` set.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The same error rendered the way Ollama does: `{"error": "message"}`.
    pub fn ollama(mut self) -> Self {
        self.ollama = true;
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        if self.ollama {
            return json!({"error": self.message});
        }
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

/// The kind of error a response carries (a response extension).
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        // Read by the request middleware, which counts errors by kind.
        res.extensions_mut().insert(ErrorKind(self.metric_kind()));
        res
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::InvalidParameter(_)
            | EngineError::ContextOverflow { .. }
            | EngineError::Unsupported(_)
            | EngineError::Image(_)
            | EngineError::ImageCount { .. }
            | EngineError::ChatTemplate(_) => ApiError::bad_request(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<engine_embed::EmbedError> for ApiError {
    fn from(e: engine_embed::EmbedError) -> Self {
        match e {
            engine_embed::EmbedError::TooLong { .. } => ApiError::bad_param("input", e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_and_ollama_shapes() {
        let e = ApiError::model_not_found("no model `x`");
        let b = e.body();
        assert_eq!(b["error"]["message"], "no model `x`");
        assert_eq!(b["error"]["code"], "model_not_found");
        assert_eq!(b["error"]["param"], "model");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.clone().ollama().body(), json!({"error": "no model `x`"}));
        let r = ApiError::queue_full("m", 4).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let e: ApiError = EngineError::InvalidParameter("top_p 2 must be in (0, 1]".into()).into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e: ApiError = EngineError::Backend("boom".into()).into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
