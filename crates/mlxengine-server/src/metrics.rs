//! Prometheus counters of the server, rendered as text by `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the time-to-first-token histogram's buckets.
const TTFT_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Upper bounds (seconds) of the inter-token latency histogram's buckets.
const ITL_BUCKETS: [f64; 10] = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

/// The server's counters and gauges; shared by handlers and model workers.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Errors answered, by kind (the OpenAI error `code`, else its `type`).
    errors: Mutex<BTreeMap<String, u64>>,
    /// Resident bytes of each loaded model, by served id.
    model_memory: Mutex<BTreeMap<String, u64>>,
    /// Generations running now.
    pub running: AtomicU64,
    /// Requests waiting in a model queue.
    pub waiting: AtomicU64,
    /// Prompt tokens of finished generations.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generated_tokens: AtomicU64,
    /// Texts embedded.
    pub embedded_inputs: AtomicU64,
    /// Forward runs of embedding models (requests queued together share one).
    pub embed_batches: AtomicU64,
    /// The memory budget models are loaded within (0: none).
    pub memory_budget_bytes: AtomicU64,
    /// Generations stopped because their client went away.
    pub cancelled: AtomicU64,
    /// Models loaded now.
    pub resident_models: AtomicU64,
    /// Bytes of KV cache held by running generations.
    pub kv_cache_bytes: AtomicU64,
    /// Bytes held by the prompt-prefix caches.
    pub prefix_cache_bytes: AtomicU64,
    /// Prompt tokens whose prefill the prefix cache saved.
    pub prompt_tokens_cached: AtomicU64,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; 10],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64; 10], seconds: f64) {
        for (i, bound) in bounds.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, bounds: &[f64; 10]) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, bound) in bounds.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", self.counts[i]);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum, self.count
        );
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn record_request(&self, endpoint: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((endpoint.to_string(), status)).or_default() += 1;
        }
    }

    /// Counts one error answered (before or during a stream).
    pub fn record_error(&self, kind: &str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(kind.to_string()).or_default() += 1;
        }
    }

    /// Sets the resident bytes of model `id` (`None`: it was unloaded).
    pub fn set_model_memory(&self, id: &str, bytes: Option<u64>) {
        if let Ok(mut m) = self.model_memory.lock() {
            match bytes {
                Some(b) => {
                    m.insert(id.to_string(), b);
                }
                None => {
                    m.remove(id);
                }
            }
        }
    }

    /// Records one time to first token.
    pub fn observe_ttft(&self, seconds: f64) {
        if let Ok(mut h) = self.ttft.lock() {
            h.observe(&TTFT_BUCKETS, seconds);
        }
    }

    /// Records the time between two tokens of one generation.
    pub fn observe_itl(&self, seconds: f64) {
        if let Ok(mut h) = self.itl.lock() {
            h.observe(&ITL_BUCKETS, seconds);
        }
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Moves a gauge from `old` to `new` (a worker's share of a sum).
    pub fn shift(gauge: &AtomicU64, old: u64, new: u64) {
        if new >= old {
            gauge.fetch_add(new - old, Ordering::Relaxed);
        } else {
            let d = old - new;
            let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(d)));
        }
    }

    /// Subtracts one from a gauge (never below zero).
    pub fn dec(gauge: &AtomicU64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(1)));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP mlxengine_requests_total HTTP requests answered, by endpoint and status."
        );
        let _ = writeln!(out, "# TYPE mlxengine_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((endpoint, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "mlxengine_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                    label(endpoint)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP mlxengine_errors_total Errors answered (before or during a stream), by kind.\n# TYPE mlxengine_errors_total counter"
        );
        if let Ok(m) = self.errors.lock() {
            for (kind, n) in m.iter() {
                let _ = writeln!(out, "mlxengine_errors_total{{kind=\"{}\"}} {n}", label(kind));
            }
        }
        let _ = writeln!(
            out,
            "# HELP mlxengine_model_memory_bytes Resident bytes of each loaded model (measured at load).\n# TYPE mlxengine_model_memory_bytes gauge"
        );
        if let Ok(m) = self.model_memory.lock() {
            for (id, n) in m.iter() {
                let _ = writeln!(out, "mlxengine_model_memory_bytes{{model=\"{}\"}} {n}", label(id));
            }
        }
        let gauges = [
            ("mlxengine_requests_running", "Generations running now.", &self.running),
            (
                "mlxengine_requests_waiting",
                "Requests waiting in a model queue.",
                &self.waiting,
            ),
            ("mlxengine_resident_models", "Models loaded now.", &self.resident_models),
            (
                "mlxengine_memory_budget_bytes",
                "The memory budget models are loaded within (0: none).",
                &self.memory_budget_bytes,
            ),
            (
                "mlxengine_kv_cache_bytes",
                "Bytes of KV cache held by running generations.",
                &self.kv_cache_bytes,
            ),
            (
                "mlxengine_prefix_cache_bytes",
                "Bytes held by the prompt-prefix caches.",
                &self.prefix_cache_bytes,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let counters = [
            (
                "mlxengine_prompt_tokens_total",
                "Prompt tokens of finished generations.",
                &self.prompt_tokens,
            ),
            (
                "mlxengine_generated_tokens_total",
                "Tokens generated.",
                &self.generated_tokens,
            ),
            (
                "mlxengine_embedded_inputs_total",
                "Texts embedded.",
                &self.embedded_inputs,
            ),
            (
                "mlxengine_embed_batches_total",
                "Forward runs of embedding models; requests queued together share one.",
                &self.embed_batches,
            ),
            (
                "mlxengine_prompt_tokens_cached_total",
                "Prompt tokens whose prefill the prefix cache saved.",
                &self.prompt_tokens_cached,
            ),
            (
                "mlxengine_generations_cancelled_total",
                "Generations stopped because the client went away.",
                &self.cancelled,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        if let Ok(h) = self.ttft.lock() {
            h.render(
                &mut out,
                "mlxengine_time_to_first_token_seconds",
                "Time from queueing a generation to its first token.",
                &TTFT_BUCKETS,
            );
        }
        if let Ok(h) = self.itl.lock() {
            h.render(
                &mut out,
                "mlxengine_inter_token_latency_seconds",
                "Time between consecutive tokens of a generation.",
                &ITL_BUCKETS,
            );
        }
        out
    }
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.record_request("/v1/models", 200);
        m.record_request("/v1/models", 200);
        m.observe_ttft(0.3);
        m.observe_itl(0.015);
        m.observe_itl(0.3);
        Metrics::add(&m.generated_tokens, 5);
        m.record_error("queue_full");
        m.record_error("queue_full");
        m.set_model_memory("a\"b", Some(7));
        m.set_model_memory("gone", Some(1));
        m.set_model_memory("gone", None);
        let text = m.render();
        assert!(text.contains("mlxengine_errors_total{kind=\"queue_full\"} 2"), "{text}");
        assert!(
            text.contains("mlxengine_model_memory_bytes{model=\"a\\\"b\"} 7"),
            "{text}"
        );
        assert!(!text.contains("gone"), "{text}");
        assert!(text.contains("mlxengine_requests_total{endpoint=\"/v1/models\",status=\"200\"} 2"));
        assert!(text.contains("mlxengine_time_to_first_token_seconds_bucket{le=\"0.25\"} 0"));
        assert!(text.contains("mlxengine_time_to_first_token_seconds_bucket{le=\"0.5\"} 1"));
        assert!(text.contains("mlxengine_generated_tokens_total 5"));
        assert!(text.contains("mlxengine_inter_token_latency_seconds_bucket{le=\"0.01\"} 0"));
        assert!(text.contains("mlxengine_inter_token_latency_seconds_bucket{le=\"0.02\"} 1"));
        assert!(text.contains("mlxengine_inter_token_latency_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("mlxengine_inter_token_latency_seconds_count 2"));
    }
}
