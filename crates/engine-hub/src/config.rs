//! Settings read from the environment, as `huggingface_hub` reads them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{HubError, Result};

/// Default hub endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How failed requests are retried: exponential backoff from `base_delay`,
/// capped at `max_delay`, with the server's `Retry-After` taking precedence
/// (capped at `max_retry_after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per request, first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles after each failure.
    pub base_delay: Duration,
    /// Upper bound of the backoff delay.
    pub max_delay: Duration,
    /// Upper bound on a `Retry-After` the server asks for.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1`, after `attempt` failures (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Client settings. [`HubConfig::from_env`] reads them the way Python's
/// `huggingface_hub` does, so both tools share one cache and one login.
#[derive(Clone)]
pub struct HubConfig {
    /// Hub base URL without trailing `/` (`HF_ENDPOINT`).
    pub endpoint: String,
    /// Access token (`HF_TOKEN`, else the `token` file under `HF_HOME`).
    /// Sent only to the endpoint's origin; never logged.
    pub token: Option<String>,
    /// Never touch the network (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// Cache root holding `models--org--name` folders (`HF_HUB_CACHE`).
    pub cache_dir: PathBuf,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for any read on a connection before it counts as dropped
    /// (and the download resumes on a new one).
    pub read_timeout: Duration,
    /// `User-Agent` header.
    pub user_agent: String,
}

impl fmt::Debug for HubConfig {
    // Hand-written so the token can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .field("cache_dir", &self.cache_dir)
            .field("retry", &self.retry)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

impl HubConfig {
    /// Settings for `endpoint` and `cache_dir`, online, no token, defaults
    /// for the rest.
    pub fn new(endpoint: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        HubConfig {
            endpoint: endpoint.into().trim_end_matches('/').to_string(),
            token: None,
            offline: false,
            cache_dir: cache_dir.into(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            user_agent: format!("mlxengine/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `lookup` (the environment, or a map in tests):
    ///
    /// - endpoint: `HF_ENDPOINT`, default `https://huggingface.co`;
    /// - cache: `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`,
    ///   `$XDG_CACHE_HOME/huggingface/hub`, `~/.cache/huggingface/hub`;
    /// - token: `HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`, then the `token` file
    ///   beside the cache (`huggingface-cli login` writes it), unless
    ///   `HF_HUB_DISABLE_IMPLICIT_TOKEN` is set;
    /// - offline: `HF_HUB_OFFLINE` in `1`, `ON`, `YES`, `TRUE`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let endpoint = get("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(HubError::Config {
                name: "HF_ENDPOINT",
                value: endpoint,
                reason: "it must start with http:// or https://, e.g. https://huggingface.co",
            });
        }
        let hf_home = get("HF_HOME").map(PathBuf::from).or_else(|| {
            get("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("huggingface"))
                .or_else(|| get("HOME").map(|h| PathBuf::from(h).join(".cache").join("huggingface")))
        });
        let cache_dir = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .ok_or(HubError::Config {
                name: "HOME",
                value: String::new(),
                reason: "no cache folder can be derived; set HF_HUB_CACHE or HF_HOME",
            })?;
        let token = get("HF_TOKEN")
            .or_else(|| get("HUGGING_FACE_HUB_TOKEN"))
            .map(|t| t.trim().to_string())
            .or_else(|| {
                if is_true(get("HF_HUB_DISABLE_IMPLICIT_TOKEN").as_deref()) {
                    return None;
                }
                // The token file lives in HF_HOME (hf-hub derives it from the cache path).
                let home = hf_home.clone()?;
                hf_hub::Cache::new(home.join("hub")).token()
            });
        let offline = is_true(get("HF_HUB_OFFLINE").as_deref());
        let mut cfg = HubConfig::new(endpoint, cache_dir);
        cfg.token = token;
        cfg.offline = offline;
        Ok(cfg)
    }
}

fn is_true(v: Option<&str>) -> bool {
    v.is_some_and(|v| matches!(v.trim().to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<HubConfig> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn cache_precedence() {
        assert_eq!(
            cfg(&[("HOME", "/h")]).unwrap().cache_dir,
            PathBuf::from("/h/.cache/huggingface/hub")
        );
        assert_eq!(
            cfg(&[("HOME", "/h"), ("HF_HOME", "/hf")]).unwrap().cache_dir,
            PathBuf::from("/hf/hub")
        );
        assert_eq!(
            cfg(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]).unwrap().cache_dir,
            PathBuf::from("/c")
        );
        assert!(cfg(&[]).is_err());
    }

    #[test]
    fn endpoint_token_offline() {
        let c = cfg(&[
            ("HOME", "/h"),
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_TOKEN", "hf_secret"),
            ("HF_HUB_OFFLINE", "yes"),
        ])
        .unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert_eq!(c.token.as_deref(), Some("hf_secret"));
        assert!(c.offline);
        assert!(!format!("{c:?}").contains("hf_secret"));
        let d = cfg(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "0")]).unwrap();
        assert_eq!(d.endpoint, DEFAULT_ENDPOINT);
        assert!(!d.offline);
        assert!(cfg(&[("HOME", "/h"), ("HF_ENDPOINT", "ftp://x")]).is_err());
    }

    #[test]
    fn token_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap();
        assert_eq!(cfg(&[("HF_HOME", home)]).unwrap().token.as_deref(), Some("hf_file"));
        assert_eq!(
            cfg(&[("HF_HOME", home), ("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")])
                .unwrap()
                .token,
            None
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_millis(500));
        assert_eq!(p.backoff(2), Duration::from_secs(1));
        assert_eq!(p.backoff(40), p.max_delay);
    }
}
