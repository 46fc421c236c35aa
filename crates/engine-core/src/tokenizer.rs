//! Text ⇄ token ids, built from a Hugging Face `tokenizer.json` or from the
//! tokenizer a GGUF file carries in its metadata.
//!
//! The API takes `&str`, so text is valid UTF-8 by construction: raw bytes
//! from a user (a file, a socket) must be converted at that edge, where a
//! non-UTF-8 input gets its own clear error.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Map, Value};

use crate::chat_template::{template_source_from_dir, TEMPLATE_END_OF_TURN_TOKENS};
use crate::gguf::{GgufError, GgufMetadata};

/// Errors loading or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}; check that the file exists and is readable")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{path} is not valid JSON ({source}); re-download the model files")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A model directory has no `tokenizer.json`.
    #[error(
        "{dir} has no tokenizer.json; download the model's full repository (tokenizer.json \
         is required — slow-tokenizer files such as tokenizer.model alone are not supported)"
    )]
    NoTokenizerJson {
        /// The model directory.
        dir: PathBuf,
    },
    /// The tokenizers library rejected the tokenizer definition.
    #[error("cannot load the tokenizer from {source_name}: {message}; re-download the model files, or report the model if they are intact")]
    Load {
        /// Where the definition came from.
        source_name: String,
        /// What the tokenizers library said.
        message: String,
    },
    /// Reading GGUF metadata failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The GGUF names a tokenizer family this crate cannot build.
    #[error(
        "{path} uses tokenizer model `{model}`, which is not supported (supported: gpt2, llama); \
         use the original model's tokenizer.json instead"
    )]
    UnsupportedGgufTokenizer {
        /// The file.
        path: PathBuf,
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },
    /// The GGUF names a pre-tokenizer (how text is split before BPE) that
    /// this crate does not know: guessing would give token ids that differ
    /// from llama.cpp's.
    #[error(
        "{path}: the GGUF pre-tokenizer `{pre}` (from {origin}) is not supported (known: {known}); \
         token ids would differ from llama.cpp's. Use the original model's tokenizer.json, or, \
         if you know the splitting matches one of the known ones, set {env}=<name> \
         (e.g. {env}=gpt2) to use it"
    )]
    UnknownGgufPreTokenizer {
        /// The file.
        path: PathBuf,
        /// The value of `tokenizer.ggml.pre` (or of the override).
        pre: String,
        /// Where the name came from: `tokenizer.ggml.pre` or the override.
        origin: &'static str,
        /// The names that are supported.
        known: String,
        /// The override's environment variable.
        env: &'static str,
    },
    /// The GGUF tokenizer metadata is inconsistent.
    #[error("{path} has inconsistent tokenizer metadata: {reason}; re-convert the model with a current llama.cpp")]
    BadGgufTokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Encoding failed.
    #[error("cannot tokenize the text: {0}")]
    Encode(String),
    /// Decoding failed.
    #[error("cannot decode token ids: {0}")]
    Decode(String),
}

/// Result alias for tokenizer operations.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

/// A tokenizer plus the special-token facts generation needs (all EOS ids,
/// BOS). Cloning is cheap: the vocabulary is shared.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    tok: tokenizers::Tokenizer,
    eos_token_ids: Vec<u32>,
    bos_token_id: Option<u32>,
    /// Added by `encode` itself (GGUF tokenizers have no post-processor).
    prepend_bos: bool,
    append_eos: bool,
    /// Whether `encode(.., true)` adds a BOS (either way).
    add_bos: bool,
    /// A copy that reads special-token text as plain text (for chat content).
    plain: OnceLock<tokenizers::Tokenizer>,
    /// The texts of the special (control) tokens.
    specials: OnceLock<Vec<String>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_token_ids", &self.inner.eos_token_ids)
            .field("bos_token_id", &self.inner.bos_token_id)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` (tokenizer_config.json's two spellings).
fn token_content(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// An id or a list of ids (config.json / generation_config.json spellings).
fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect(),
        _ => Vec::new(),
    }
}

fn push_unique(ids: &mut Vec<u32>, id: u32) {
    if !ids.contains(&id) {
        ids.push(id);
    }
}

impl Tokenizer {
    fn from_parts(
        tok: tokenizers::Tokenizer,
        eos: Vec<u32>,
        bos: Option<u32>,
        prepend_bos: bool,
        append_eos: bool,
        add_bos: bool,
    ) -> Self {
        Tokenizer {
            inner: Arc::new(Inner {
                tok,
                eos_token_ids: eos,
                bos_token_id: bos,
                prepend_bos,
                append_eos,
                add_bos,
                plain: OnceLock::new(),
                specials: OnceLock::new(),
            }),
        }
    }

    /// Wraps an already-built `tokenizers::Tokenizer`.
    pub fn from_tokenizers(tok: tokenizers::Tokenizer, eos_token_ids: Vec<u32>, bos_token_id: Option<u32>) -> Self {
        let add_bos = bos_token_id.is_some_and(|b| {
            tok.encode("a", true)
                .map(|e| e.get_ids().first() == Some(&b))
                .unwrap_or(false)
        });
        Self::from_parts(tok, eos_token_ids, bos_token_id, false, false, add_bos)
    }

    /// Loads a Hugging Face `tokenizer.json`. No EOS/BOS facts are known;
    /// use [`Tokenizer::from_dir`] for a model directory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let tok = Self::load_tokenizer_json(path)?;
        Ok(Self::from_tokenizers(tok, Vec::new(), None))
    }

    fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
        let bytes = fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let load_err = |e: tokenizers::Error| TokenizerError::Load {
            source_name: path.display().to_string(),
            message: e.to_string(),
        };
        let mut tok = tokenizers::Tokenizer::from_bytes(&bytes).map_err(load_err)?;
        // Like transformers, ignore padding/truncation saved in the file:
        // callers pad and truncate for their own batch and context sizes.
        tok.with_padding(None).with_truncation(None).map_err(load_err)?;
        Ok(tok)
    }

    /// Loads the tokenizer of a Hugging Face model directory: `tokenizer.json`
    /// plus the special-token facts from `tokenizer_config.json`,
    /// `generation_config.json` and `config.json`.
    ///
    /// EOS ids are the union of: `generation_config.json`'s and
    /// `config.json`'s `eos_token_id` (an id or a list), the
    /// `tokenizer_config.json` `eos_token`, and the end-of-turn tokens
    /// (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, ...) that the chat
    /// template uses.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            return Err(TokenizerError::NoTokenizerJson { dir: dir.to_path_buf() });
        }
        let tok = Self::load_tokenizer_json(&tj)?;
        let tc = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let gen = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let cfg = read_json_opt(&dir.join("config.json"))?.unwrap_or(Value::Null);

        let mut eos = Vec::new();
        for v in [
            gen.get("eos_token_id"),
            cfg.get("eos_token_id"),
            cfg.get("text_config").and_then(|t| t.get("eos_token_id")),
        ] {
            for id in ids_of(v) {
                push_unique(&mut eos, id);
            }
        }
        if let Some(id) = tc
            .get("eos_token")
            .and_then(token_content)
            .and_then(|t| tok.token_to_id(t))
        {
            push_unique(&mut eos, id);
        }
        let template = template_source_from_dir(dir).ok().flatten();
        add_template_stop_tokens(&mut eos, template.as_deref(), |t| tok.token_to_id(t));

        let bos = tc
            .get("bos_token")
            .and_then(token_content)
            .and_then(|t| tok.token_to_id(t))
            .or_else(|| ids_of(gen.get("bos_token_id")).first().copied())
            .or_else(|| ids_of(cfg.get("bos_token_id")).first().copied());
        Ok(Self::from_tokenizers(tok, eos, bos))
    }

    /// Writes the vocabulary, model and pre/post-processing as a Hugging Face
    /// `tokenizer.json` (what transformers' fast tokenizers and mlx-lm read).
    pub fn save_json(&self, path: impl AsRef<Path>) -> Result<()> {
        self.inner
            .tok
            .save(path.as_ref(), false)
            .map_err(|e| TokenizerError::Load {
                source_name: path.as_ref().display().to_string(),
                message: format!("cannot write it: {e}"),
            })
    }

    /// Builds the tokenizer described by a GGUF file's metadata
    /// (`tokenizer.ggml.*`): byte-level BPE for `gpt2`, SentencePiece-style
    /// BPE with byte fallback for `llama`.
    pub fn from_gguf(meta: &GgufMetadata) -> Result<Self> {
        let path = meta.path().to_path_buf();
        let bad = |reason: String| TokenizerError::BadGgufTokenizer {
            path: path.clone(),
            reason,
        };
        let model = meta
            .get_str("tokenizer.ggml.model")?
            .ok_or_else(|| meta.missing("tokenizer.ggml.model"))?;
        let tokens = meta
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| meta.missing("tokenizer.ggml.tokens"))?;
        if tokens.is_empty() {
            return Err(bad("tokenizer.ggml.tokens is empty".into()));
        }
        let types: Vec<i64> = match meta.get_array("tokenizer.ggml.token_type")? {
            Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(bad(format!("{} tokens but {} token types", tokens.len(), types.len())));
        }
        let id_key = |key: &str| -> Result<Option<u32>> {
            match meta.get_u64(key)? {
                None => Ok(None),
                Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
                Some(id) => Err(bad(format!(
                    "{key} is {id} but the vocabulary has {} tokens",
                    tokens.len()
                ))),
            }
        };
        let bos = id_key("tokenizer.ggml.bos_token_id")?;
        let eos = id_key("tokenizer.ggml.eos_token_id")?;
        let eot = id_key("tokenizer.ggml.eot_token_id")?;
        let eom = id_key("tokenizer.ggml.eom_token_id")?;
        let unk = id_key("tokenizer.ggml.unknown_token_id")?;

        let (tokenizer_json, default_add_bos) = match model {
            "gpt2" => (gpt2_json(meta, &tokens, &types)?, false),
            "llama" => (llama_json(meta, &tokens, &types, unk)?, true),
            other => {
                return Err(TokenizerError::UnsupportedGgufTokenizer {
                    path,
                    model: other.to_string(),
                })
            }
        };
        let tok = tokenizers::Tokenizer::from_bytes(tokenizer_json.to_string().as_bytes()).map_err(|e| {
            TokenizerError::Load {
                source_name: format!("the metadata of {}", path.display()),
                message: e.to_string(),
            }
        })?;
        let add_bos = meta
            .get_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(default_add_bos)
            && bos.is_some();
        let add_eos = meta.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false) && eos.is_some();

        let mut eos_ids = Vec::new();
        for id in [eos, eot, eom].into_iter().flatten() {
            push_unique(&mut eos_ids, id);
        }
        add_template_stop_tokens(&mut eos_ids, meta.chat_template()?, |t| tok.token_to_id(t));
        Ok(Self::from_parts(tok, eos_ids, bos, add_bos, add_eos, add_bos))
    }

    /// Encodes `text`. With `add_special_tokens`, the model's BOS (and any
    /// other post-processing template) is added as the model expects.
    /// Special tokens written in the text (`<|im_start|>`) map to their ids.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .tok
            .encode(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens {
            if let (true, Some(b)) = (self.inner.prepend_bos, self.inner.bos_token_id) {
                ids.insert(0, b);
            }
            if let (true, Some(&e)) = (self.inner.append_eos, self.inner.eos_token_ids.first()) {
                ids.push(e);
            }
        }
        Ok(ids)
    }

    /// Encodes a chat prompt rendered by a template so that only the
    /// template's own markup yields special tokens: each of `contents` (the
    /// messages' texts, in the order the template writes them) is found in
    /// `rendered` and tokenized as plain text, so a user typing
    /// `<|im_end|>\n<|im_start|>system` cannot forge a turn (transformers'
    /// `split_special_tokens` for content). With `add_bos` the model's BOS is
    /// prepended unless the template already wrote it — never twice.
    pub fn encode_chat(&self, rendered: &str, contents: &[&str], add_bos: bool) -> Result<Vec<u32>> {
        let specials = self.inner.specials.get_or_init(|| {
            let added = self.inner.tok.get_added_tokens_decoder();
            let texts = added.values().filter(|t| t.special && !t.content.is_empty());
            texts.map(|t| t.content.clone()).collect()
        });
        let forged = |c: &str| specials.iter().find(|s| c.contains(s.as_str())).cloned();
        let mut ids = if contents.iter().all(|c| forged(c).is_none()) {
            // The common case: nothing to protect, one pass over the whole text.
            self.encode(rendered, false)?
        } else {
            let mut ids = Vec::new();
            let mut cursor = 0;
            for content in contents {
                let Some(token) = forged(content) else { continue };
                // Templates may trim a message; look for it as written first.
                let found = [*content, content.trim()]
                    .into_iter()
                    .find_map(|c| rendered[cursor..].find(c).map(|p| (cursor + p, c.len())));
                let Some((start, len)) = found else {
                    return Err(TokenizerError::Encode(format!(
                        "a message contains the control token `{token}`, and the chat template rewrites that \
                         message so it cannot be kept as plain text; remove `{token}` from the message"
                    )));
                };
                ids.extend(self.encode(&rendered[cursor..start], false)?);
                let plain = self.plain().encode(&rendered[start..start + len], false);
                ids.extend_from_slice(plain.map_err(|e| TokenizerError::Encode(e.to_string()))?.get_ids());
                cursor = start + len;
            }
            ids.extend(self.encode(&rendered[cursor..], false)?);
            ids
        };
        if let (true, Some(bos)) = (add_bos && self.inner.add_bos, self.inner.bos_token_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    fn plain(&self) -> &tokenizers::Tokenizer {
        self.inner.plain.get_or_init(|| {
            let mut t = self.inner.tok.clone();
            t.set_encode_special_tokens(true);
            t
        })
    }

    /// Decodes `ids` to text; ids outside the vocabulary are skipped (models
    /// often pad their embedding past the tokenizer's vocabulary).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .tok
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Every id that ends generation (may be empty for encoder-only models).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.eos_token_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.inner.eos_token_ids.contains(&id)
    }

    /// The BOS id, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos_token_id
    }

    /// Whether `encode(.., true)` starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.inner.add_bos
    }

    /// The BOS token's text (for chat templates' `bos_token`).
    pub fn bos_token(&self) -> Option<String> {
        self.inner.bos_token_id.and_then(|id| self.id_to_token(id))
    }

    /// The primary EOS token's text (for chat templates' `eos_token`).
    pub fn eos_token(&self) -> Option<String> {
        self.inner.eos_token_ids.first().and_then(|&id| self.id_to_token(id))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.tok.get_vocab_size(true)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tok.token_to_id(token)
    }

    /// The token string of an id (in the vocabulary's own spelling, e.g.
    /// `Ġhello` or `▁hello`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.tok.id_to_token(id)
    }

    /// Whether `id` is a special (added, control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .tok
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    }

    /// The underlying `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner.tok
    }

    /// A streaming detokenizer over this tokenizer.
    pub fn stream(&self, skip_special_tokens: bool) -> crate::detokenize::StreamingDetokenizer {
        crate::detokenize::StreamingDetokenizer::new(self.clone(), skip_special_tokens)
    }
}

/// Adds the end-of-turn tokens that `template` uses and the vocabulary has.
fn add_template_stop_tokens(eos: &mut Vec<u32>, template: Option<&str>, lookup: impl Fn(&str) -> Option<u32>) {
    let Some(template) = template else { return };
    for t in TEMPLATE_END_OF_TURN_TOKENS {
        if template.contains(t) {
            if let Some(id) = lookup(t) {
                push_unique(eos, id);
            }
        }
    }
}

// llama.cpp token types (`llama_token_type`).
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// GPT-2's byte → printable char table used by byte-level BPE.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        let c = if printable {
            b
        } else {
            n += 1;
            255 + n
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\u{fffd}');
    }
    table
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({
        "id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": special,
    })
}

// Pre-tokenizer splits per `tokenizer.ggml.pre` (llama.cpp's names; the
// regexes are those of the models' own tokenizer.json files).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
const TEKKEN_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+",
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The environment variable that overrides a GGUF's `tokenizer.ggml.pre`
/// (for a pre-tokenizer this crate does not know but which splits text like
/// one it does): `MLXENGINE_GGUF_PRE=gpt2`.
pub const GGUF_PRE_ENV: &str = "MLXENGINE_GGUF_PRE";

/// The `tokenizer.ggml.pre` names [`gpt2_pre_tokenizer`] builds.
const KNOWN_PRE_TOKENIZERS: &[&str] = &[
    "default",
    "gpt2",
    "smollm",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "dbrx",
    "smaug-bpe",
    "qwen2",
    "deepseek-r1-qwen",
    "kormo",
    "megrez",
    "qwen35",
    "gpt-4o",
    "llama4",
    "kanana2",
    "minimax-m2",
    "tekken",
];

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre = pre`, as a
/// tokenizer.json fragment; `None` for a name this crate does not know.
fn gpt2_pre_tokenizer(pre: &str) -> Option<Value> {
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "dbrx"
        | "smaug-bpe" => split(LLAMA3_SPLIT),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "megrez" => split(QWEN2_SPLIT),
        "qwen35" => split(QWEN35_SPLIT),
        "gpt-4o" | "llama4" | "kanana2" | "minimax-m2" => split(GPT4O_SPLIT),
        "tekken" => split(TEKKEN_SPLIT),
        // SmolLM's tokenizer.json: every digit alone, then GPT-2 splitting.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "gpt2" | "default" => byte_level(true),
        _ => return None,
    })
}

fn gpt2_json(meta: &GgufMetadata, tokens: &[&str], types: &[i64]) -> Result<Value> {
    let alphabet = bytes_to_unicode();
    let in_alphabet: HashSet<char> = alphabet.iter().copied().collect();
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (&t, &ty)) in tokens.iter().zip(types).enumerate() {
        let special = ty == TYPE_CONTROL || ty == TYPE_UNKNOWN;
        let key = if special || ty == TYPE_USER_DEFINED || t.chars().all(|c| in_alphabet.contains(&c)) {
            t.to_string()
        } else {
            // A normal token stored as plain text: spell it in the byte alphabet.
            t.bytes().map(|b| alphabet[b as usize]).collect()
        };
        if special || ty == TYPE_USER_DEFINED {
            added.push(added_token(id, t, special));
        }
        // A duplicate spelling keeps its first id, as llama.cpp does.
        vocab.entry(key).or_insert(Value::from(id));
    }
    let merges: Vec<Value> = match meta.get_str_array("tokenizer.ggml.merges")? {
        Some(m) => m
            .iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
            .collect(),
        None => return Err(meta.missing("tokenizer.ggml.merges").into()),
    };
    // An explicit override wins; an unknown name is an error, never a guess.
    let env_pre = std::env::var(GGUF_PRE_ENV).ok().filter(|v| !v.trim().is_empty());
    let pre = match &env_pre {
        Some(v) => v.trim(),
        None => meta.get_str("tokenizer.ggml.pre")?.unwrap_or("default"),
    };
    let pre_tokenizer = gpt2_pre_tokenizer(pre).ok_or_else(|| TokenizerError::UnknownGgufPreTokenizer {
        path: meta.path().to_path_buf(),
        pre: pre.to_string(),
        origin: if env_pre.is_some() {
            GGUF_PRE_ENV
        } else {
            "tokenizer.ggml.pre"
        },
        known: KNOWN_PRE_TOKENIZERS.join(", "),
        env: GGUF_PRE_ENV,
    })?;
    if env_pre.is_some() {
        tracing::info!(pre_tokenizer = pre, "GGUF pre-tokenizer set by {GGUF_PRE_ENV}");
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

fn llama_json(meta: &GgufMetadata, tokens: &[&str], types: &[i64], unk: Option<u32>) -> Result<Value> {
    let scores: Vec<f64> = match meta.get_array("tokenizer.ggml.scores")? {
        Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
        None => vec![0.0; tokens.len()],
    };
    let mut vocab = Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (&t, &ty)) in tokens.iter().zip(types).enumerate() {
        vocab.entry(t.to_string()).or_insert(Value::from(id));
        if ty == TYPE_CONTROL || ty == TYPE_UNKNOWN || ty == TYPE_USER_DEFINED {
            added.push(added_token(id, t, ty != TYPE_USER_DEFINED));
        }
    }
    let merges = match meta.get_str_array("tokenizer.ggml.merges")? {
        Some(m) => m
            .iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
            .collect(),
        None => spm_merges(tokens, &scores),
    };
    let add_space_prefix = meta.get_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    let normalizer = json!({"type": "Sequence", "normalizers": normalizers});
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        // llama.cpp (like sentencepiece) puts "▁" before every text fragment
        // that starts the input or follows a special token, even one that
        // already starts with a space; a per-fragment normalizer does exactly
        // that, while a Metaspace pre-tokenizer would skip the second case.
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null,
            "unk_token": unk.and_then(|u| tokens.get(u as usize)).map(|s| s.to_string()),
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// BPE merges implied by a SentencePiece vocabulary: every split of a token
/// into two tokens of the vocabulary, best-scoring merged token first (the
/// same order as transformers' `generate_merges`).
fn spm_merges(tokens: &[&str], scores: &[f64]) -> Vec<Value> {
    let index: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().rev().map(|(i, &t)| (t, i)).collect();
    let mut merges: Vec<(usize, usize, f64)> = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        if index.get(t) != Some(&i) {
            continue;
        }
        let score = scores.get(i).copied().unwrap_or(0.0);
        let mut local = Vec::new();
        for (pos, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(pos);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                local.push((li, ri, score));
            }
        }
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    // Stable sort, descending by (score, left length, right length).
    merges.sort_by(|a, b| {
        let key = |m: &(usize, usize, f64)| (m.2, tokens[m.0].chars().count(), tokens[m.1].chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0).then(kb.1.cmp(&ka.1)).then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| json!([tokens[l], tokens[r]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = bytes_to_unicode();
        let set: HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
    }

    #[test]
    fn every_known_pre_tokenizer_compiles_and_round_trips() {
        let vocab: Map<String, Value> = bytes_to_unicode()
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), Value::from(i)))
            .collect();
        assert!(gpt2_pre_tokenizer("something-new").is_none());
        for &pre in KNOWN_PRE_TOKENIZERS {
            let def = json!({
                "version": "1.0", "added_tokens": [], "normalizer": null, "post_processor": null,
                "pre_tokenizer": gpt2_pre_tokenizer(pre).unwrap_or_else(|| panic!("{pre} is known")),
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "vocab": vocab, "merges": []},
            });
            let tok =
                tokenizers::Tokenizer::from_bytes(def.to_string().as_bytes()).unwrap_or_else(|e| panic!("{pre}: {e}"));
            let text = "Hello 1234 world's!\n\n  spaced 日本 😀";
            let ids = tok.encode(text, false).unwrap_or_else(|e| panic!("{pre}: {e}"));
            assert_eq!(ids.len(), text.len(), "{pre}: one byte token per byte");
            assert_eq!(tok.decode(ids.get_ids(), false).unwrap(), text, "{pre}");
        }
    }

    #[test]
    fn gguf_without_tokenizer_metadata_is_a_clear_error() {
        let bytes = crate::gguf::tests::tiny_gguf();
        let meta = GgufMetadata::read_from(&bytes[..], bytes.len() as u64, "x.gguf").unwrap();
        let err = Tokenizer::from_gguf(&meta).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.gguf") && msg.contains("tokenizer.ggml.model"), "{msg}");
    }

    #[test]
    fn spm_merges_prefer_higher_scores() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let m = spm_merges(&tokens, &scores);
        assert_eq!(m[0], json!(["a", "b"]));
        assert_eq!(m[1], json!(["b", "c"]));
        assert!(m.contains(&json!(["ab", "c"])) && m.contains(&json!(["a", "bc"])));
    }

    #[test]
    fn ids_of_accepts_int_and_list() {
        assert_eq!(ids_of(Some(&json!(7))), vec![7]);
        assert_eq!(ids_of(Some(&json!([1, 2, -3]))), vec![1, 2]);
        assert!(ids_of(Some(&json!("x"))).is_empty());
    }
}
