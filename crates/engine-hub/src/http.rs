//! The HTTP layer: one blocking `ureq` 3 agent (1 MiB input buffer: large
//! reads keep a pull's CPU cost near curl's), redirects followed by hand so
//! the token only ever goes to the endpoint's origin, hub error codes mapped
//! to [`HubError`], and a retry loop with exponential backoff that honours
//! `Retry-After`.

use std::time::{Duration, SystemTime};

use crate::config::{HubConfig, RetryPolicy};
use crate::error::{HubError, Result};
use crate::progress::CancelFlag;

/// Outcome of one failed attempt.
pub(crate) enum Failure {
    /// Worth another attempt (connection reset, 429, 5xx, short body…).
    Retry {
        /// What went wrong; returned if no attempt is left.
        error: HubError,
        /// Server-requested wait (`Retry-After`).
        after: Option<Duration>,
    },
    /// A download was cut after making progress: resume soon, and do not
    /// count it against the attempts (a flaky link still converges).
    Resume(HubError),
    /// Retrying cannot help.
    Fatal(HubError),
}

impl From<HubError> for Failure {
    fn from(e: HubError) -> Self {
        Failure::Fatal(e)
    }
}

/// What a request is about, to name it in errors.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ctx {
    pub repo: String,
    pub revision: String,
    pub file: Option<String>,
}

/// `scheme://host:port`, lower-cased, default ports made explicit.
pub(crate) fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?.to_ascii_lowercase();
    if authority.is_empty() {
        return None;
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']'));
    let authority = if has_port {
        authority
    } else {
        let port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        format!("{authority}:{port}")
    };
    Some(format!("{scheme}://{authority}"))
}

/// Resolves a `Location` header against the URL that returned it.
fn join_location(base: &str, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_string());
    }
    let (scheme, rest) = base.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    if let Some(abs) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{abs}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    // Relative to the base's directory.
    let path = rest[authority.len()..].split(['?', '#']).next().unwrap_or("");
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    Some(format!("{scheme}://{authority}{dir}/{location}"))
}

/// Parses `Retry-After`: delta-seconds or an HTTP date.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// A response with its body.
pub(crate) type Response = ureq::http::Response<ureq::Body>;

/// A header's value as text.
pub(crate) fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(crate) struct Http {
    agent: ureq::Agent,
    endpoint: String,
    endpoint_origin: Option<String>,
    token: Option<String>,
    pub(crate) retry: RetryPolicy,
    pub(crate) cancel: CancelFlag,
}

impl Http {
    pub fn new(cfg: &HubConfig, cancel: CancelFlag) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Redirects are followed by hand (see `send`) to control the token.
            .max_redirects(0)
            .max_redirects_will_error(false)
            // Statuses are mapped to hub errors here, not by ureq.
            .http_status_as_error(false)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            .user_agent(cfg.user_agent.as_str())
            .input_buffer_size(1 << 20)
            .build()
            .into();
        Http {
            agent,
            endpoint: cfg.endpoint.clone(),
            endpoint_origin: origin(&cfg.endpoint),
            token: cfg.token.clone(),
            retry: cfg.retry.clone(),
            cancel,
        }
    }

    /// Sends one request and follows up to 10 redirects. The token is attached
    /// only when the URL's origin is the endpoint's (the CDN a file redirects
    /// to never sees it). Returns the final 2xx response.
    pub fn send(&self, method: &str, url: &str, range_from: Option<u64>, ctx: &Ctx) -> Result<Response, Failure> {
        self.send_opts(method, url, range_from, ctx, true)
    }

    /// As [`Http::send`]; with `follow` false a 3xx response is returned as is.
    pub fn send_opts(
        &self,
        method: &str,
        url: &str,
        range_from: Option<u64>,
        ctx: &Ctx,
        follow: bool,
    ) -> Result<Response, Failure> {
        let mut url = url.to_string();
        for _ in 0..10 {
            let mut req = match method {
                "HEAD" => self.agent.head(&url),
                _ => self.agent.get(&url),
            };
            if let (Some(token), Some(o)) = (&self.token, &self.endpoint_origin) {
                if origin(&url).as_deref() == Some(o.as_str()) {
                    req = req.header("Authorization", format!("Bearer {token}"));
                }
            }
            if let Some(from) = range_from.filter(|&f| f > 0) {
                req = req.header("Range", format!("bytes={from}-"));
            }
            tracing::debug!(%method, %url, range_from, "hub request");
            let resp = match req.call() {
                Ok(resp) => resp,
                Err(e @ (ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl)) => {
                    return Err(Failure::Fatal(HubError::BadResponse {
                        url,
                        detail: e.to_string(),
                    }))
                }
                Err(e) => {
                    return Err(Failure::Retry {
                        error: HubError::Network {
                            url,
                            attempts: 1,
                            message: e.to_string(),
                        },
                        after: None,
                    })
                }
            };
            let status = resp.status().as_u16();
            if follow && (300..400).contains(&status) {
                match header(&resp, "location").and_then(|l| join_location(&url, l)) {
                    Some(next) => {
                        url = next;
                        continue;
                    }
                    None => {
                        return Err(Failure::Fatal(HubError::BadResponse {
                            url,
                            detail: format!("HTTP {status} without a usable Location header"),
                        }))
                    }
                }
            }
            if status >= 400 {
                return Err(self.status_failure(&url, status, resp, ctx));
            }
            return Ok(resp);
        }
        Err(Failure::Fatal(HubError::BadResponse {
            url,
            detail: "more than 10 redirects".into(),
        }))
    }

    fn status_failure(&self, url: &str, status: u16, resp: Response, ctx: &Ctx) -> Failure {
        let code = header(&resp, "x-error-code").map(str::to_string);
        let after = header(&resp, "retry-after").and_then(parse_retry_after);
        let message = resp
            .into_body()
            .read_to_string()
            .ok()
            .map(|b| {
                serde_json::from_str::<serde_json::Value>(&b)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or(b)
            })
            .unwrap_or_default();
        let message: String = message.chars().take(300).collect();
        let url = url.to_string();
        match (code.as_deref(), status) {
            (Some("RepoNotFound"), _) => Failure::Fatal(HubError::RepoNotFound {
                repo: ctx.repo.clone(),
                endpoint: self.endpoint.clone(),
            }),
            (Some("RevisionNotFound"), _) => Failure::Fatal(HubError::RevisionNotFound {
                repo: ctx.repo.clone(),
                revision: ctx.revision.clone(),
            }),
            (Some("EntryNotFound"), _) => Failure::Fatal(HubError::EntryNotFound {
                repo: ctx.repo.clone(),
                revision: ctx.revision.clone(),
                file: ctx.file.clone().unwrap_or_default(),
            }),
            (Some("GatedRepo"), _) | (_, 401) | (_, 403) => Failure::Fatal(HubError::Unauthorized { url, status }),
            (_, 404) => Failure::Fatal(match &ctx.file {
                Some(file) => HubError::EntryNotFound {
                    repo: ctx.repo.clone(),
                    revision: ctx.revision.clone(),
                    file: file.clone(),
                },
                None if !ctx.repo.is_empty() => HubError::RepoNotFound {
                    repo: ctx.repo.clone(),
                    endpoint: self.endpoint.clone(),
                },
                None => HubError::Http {
                    url,
                    status,
                    attempts: 1,
                    message,
                },
            }),
            (_, 408) | (_, 429) | (_, 500..=599) => Failure::Retry {
                error: HubError::Http {
                    url,
                    status,
                    attempts: 1,
                    message,
                },
                after,
            },
            _ => Failure::Fatal(HubError::Http {
                url,
                status,
                attempts: 1,
                message,
            }),
        }
    }

    /// Runs `op` until it succeeds, fails fatally, or attempts run out.
    /// `on_retry(attempt, delay, reason)` is told before each wait.
    pub fn with_retry<T>(
        &self,
        mut op: impl FnMut(u32) -> Result<T, Failure>,
        mut on_retry: impl FnMut(u32, Duration, &HubError),
    ) -> Result<T> {
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            if self.cancel.is_cancelled() {
                return Err(HubError::Cancelled { partial: None });
            }
            match op(attempt) {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Resume(error)) => {
                    let delay = self.retry.base_delay.min(Duration::from_secs(1));
                    tracing::warn!(?delay, error = %error, "download cut; resuming");
                    on_retry(attempt, delay, &error);
                    self.sleep(delay)?;
                    attempt = 1;
                }
                Err(Failure::Retry { error, after }) => {
                    if attempt >= max {
                        return Err(with_attempts(error, attempt));
                    }
                    let delay = match after {
                        Some(a) => a.min(self.retry.max_retry_after),
                        None => jitter(self.retry.backoff(attempt)),
                    };
                    tracing::warn!(attempt, ?delay, error = %error, "hub request failed; retrying");
                    on_retry(attempt, delay, &error);
                    self.sleep(delay)?;
                    attempt += 1;
                }
            }
        }
    }

    /// Sleeps in short slices so a cancel is noticed quickly.
    fn sleep(&self, d: Duration) -> Result<()> {
        let end = std::time::Instant::now() + d;
        loop {
            if self.cancel.is_cancelled() {
                return Err(HubError::Cancelled { partial: None });
            }
            let now = std::time::Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }

    /// GET a JSON document, with retries.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str, ctx: &Ctx) -> Result<T> {
        self.with_retry(
            |_| {
                let resp = self.send("GET", url, None, ctx)?;
                let body = resp
                    .into_body()
                    .with_config()
                    .limit(64 << 20)
                    .read_to_string()
                    .map_err(|e| Failure::Retry {
                        error: HubError::Network {
                            url: url.to_string(),
                            attempts: 1,
                            message: e.to_string(),
                        },
                        after: None,
                    })?;
                serde_json::from_str(&body).map_err(|e| {
                    Failure::Fatal(HubError::BadResponse {
                        url: url.to_string(),
                        detail: format!("invalid JSON: {e}"),
                    })
                })
            },
            |_, _, _| {},
        )
    }
}

/// Spreads retries of many clients apart (up to +25 %), without a RNG crate.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

fn with_attempts(e: HubError, n: u32) -> HubError {
    match e {
        HubError::Http {
            url, status, message, ..
        } => HubError::Http {
            url,
            status,
            attempts: n,
            message,
        },
        HubError::Network { url, message, .. } => HubError::Network {
            url,
            attempts: n,
            message,
        },
        HubError::Verification { file, detail, .. } => HubError::Verification {
            file,
            attempts: n,
            detail,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin("https://huggingface.co/api/x").as_deref(),
            Some("https://huggingface.co:443")
        );
        assert_eq!(
            origin("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin("HTTP://User@Host/x?y").as_deref(), Some("http://host:80"));
        assert_ne!(
            origin("https://cdn-lfs.huggingface.co/x"),
            origin("https://huggingface.co/x")
        );
        assert_eq!(origin("nonsense"), None);
    }

    #[test]
    fn locations() {
        let base = "http://h:1/org/name/resolve/main/a.bin";
        assert_eq!(join_location(base, "/cdn/x").unwrap(), "http://h:1/cdn/x");
        assert_eq!(join_location(base, "https://cdn/x").unwrap(), "https://cdn/x");
        assert_eq!(
            join_location(base, "b.bin").unwrap(),
            "http://h:1/org/name/resolve/main/b.bin"
        );
    }

    #[test]
    fn retry_after() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let d = parse_retry_after(&future).unwrap();
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(28), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
