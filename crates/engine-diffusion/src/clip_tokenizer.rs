//! CLIP's tokenizer from a diffusers `tokenizer/` folder: a byte-level BPE
//! with `</w>` word ends, lower-cased, built from vocab.json + merges.txt
//! (these folders often have no tokenizer.json), exactly as transformers'
//! `CLIPTokenizer` builds it; padded to `model_max_length` with the pad token
//! (`<|endoftext|>` for OpenAI CLIP, `!` for OpenCLIP).

use crate::error::{read_json, DiffusionError, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

const SPLIT: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A CLIP tokenizer that pads/truncates to a fixed length.
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_length: usize,
}

fn token_str(cfg: &Value, key: &str, default: &str) -> String {
    match cfg.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or(default).to_string(),
        _ => default.to_string(),
    }
}

impl ClipTokenizer {
    /// Loads `dir` (vocab.json, merges.txt, tokenizer_config.json).
    pub fn load(dir: &Path) -> Result<ClipTokenizer> {
        let bad = |reason: String| DiffusionError::Tokenizer {
            path: dir.to_path_buf(),
            reason,
        };
        let cfg: Value = match dir.join("tokenizer_config.json") {
            p if p.is_file() => read_json(&p, "the tokenizer config")?,
            _ => json!({}),
        };
        let vocab: BTreeMap<String, u32> = read_json(&dir.join("vocab.json"), "the CLIP vocabulary")?;
        let merges_path = dir.join("merges.txt");
        let merges_text = std::fs::read_to_string(&merges_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DiffusionError::MissingFile {
                path: merges_path.clone(),
                what: "the CLIP BPE merges".into(),
            },
            _ => DiffusionError::Io {
                path: merges_path.clone(),
                source: e,
            },
        })?;
        let merges: Vec<[&str; 2]> = merges_text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| {
                let mut it = l.split(' ');
                match (it.next(), it.next()) {
                    (Some(a), Some(b)) => Ok([a, b]),
                    _ => Err(bad(format!("merges.txt line `{l}` is not a pair"))),
                }
            })
            .collect::<Result<_>>()?;
        let (bos_s, eos_s) = (
            token_str(&cfg, "bos_token", "<|startoftext|>"),
            token_str(&cfg, "eos_token", "<|endoftext|>"),
        );
        let (pad_s, unk_s) = (
            token_str(&cfg, "pad_token", "<|endoftext|>"),
            token_str(&cfg, "unk_token", "<|endoftext|>"),
        );
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| bad(format!("the special token `{t}` is not in vocab.json")))
        };
        let (bos, eos, pad) = (id(&bos_s)?, id(&eos_s)?, id(&pad_s)?);
        let added: Vec<Value> = [(&pad_s, pad), (&bos_s, bos), (&eos_s, eos)]
            .iter()
            .map(|(t, i)| {
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                                 "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        // The tokenizer.json transformers' CLIPTokenizer would write.
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                {"type": "Lowercase"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": SPLIT}, "behavior": "Removed", "invert": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk_s, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        let inner = tokenizers::Tokenizer::from_str(&spec.to_string()).map_err(|e| bad(e.to_string()))?;
        let max_length = cfg
            .get("model_max_length")
            .and_then(Value::as_u64)
            .filter(|&n| (2..=4096).contains(&n))
            .unwrap_or(77) as usize;
        Ok(ClipTokenizer {
            inner,
            bos,
            eos,
            pad,
            max_length,
        })
    }

    /// The padded length (`model_max_length`, 77 for every SD release).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `[bos] tokens [eos] pad…` of exactly `max_length` ids, the text
    /// truncated to fit (transformers' `padding="max_length", truncation=True`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| DiffusionError::Tokenizer {
            path: PathBuf::from("<clip>"),
            reason: e.to_string(),
        })?;
        let body = enc.get_ids();
        let keep = body.len().min(self.max_length - 2);
        if keep < body.len() {
            tracing::warn!(
                tokens = body.len(),
                kept = keep,
                "prompt is longer than CLIP's {} tokens; the rest is ignored",
                self.max_length
            );
        }
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }

    /// The end-of-text id (where the pooled output is read).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }
}
