//! Chat templates: the Jinja templates Hugging Face models ship (in
//! `chat_template.jinja`, `chat_template.json` or `tokenizer_config.json`) or
//! GGUF files carry (`tokenizer.chat_template`), rendered with `minijinja`
//! the way transformers' `apply_chat_template` renders them.
//!
//! Compatibility with transformers: `trim_blocks` and `lstrip_blocks` are on;
//! Python string/dict/list methods (`.strip()`, `.startswith()`, `.items()`,
//! ...) work through `minijinja-contrib`'s pycompat layer; `raise_exception`,
//! `strftime_now` and a Python-style `tojson` (`", "`/`": "` separators, no
//! HTML escaping, `indent` and `sort_keys` arguments) are provided.
//!
//! Models without a template get [`ChatTemplate::fallback`]: one
//! `role: content` line per message, and `assistant:` as the generation
//! prompt.

use std::fs;
use std::path::{Path, PathBuf};

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::Map;

use crate::gguf::{GgufError, GgufMetadata};

/// Tokens that end an assistant turn in common chat templates. When a
/// template uses one, it is an EOS for generation even if the config does
/// not list it.
pub const TEMPLATE_END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|return|>",
    "<|call|>",
];

/// The template used when a model has none (see the module docs).
pub const FALLBACK_TEMPLATE: &str = "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat";

/// Errors loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}; check that the file exists and is readable")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is malformed or holds no usable template.
    #[error("{path}: {reason}; re-download the model files")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading GGUF metadata failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The template is not valid Jinja.
    #[error("the chat template from {source_name} does not parse: {message}; fix the template or supply another one")]
    Syntax {
        /// Where the template came from.
        source_name: String,
        /// minijinja's description, with the line.
        message: String,
    },
    /// Rendering failed (including the template's own `raise_exception`).
    #[error("the chat template from {source_name} failed to render: {message}")]
    Render {
        /// Where the template came from.
        source_name: String,
        /// What went wrong.
        message: String,
    },
}

/// Where an image attached to a message comes from (decoded by the vision
/// model that receives it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageSource {
    /// A local file (PNG, JPEG, WebP, GIF).
    Path(PathBuf),
    /// The encoded file's bytes.
    Bytes(Vec<u8>),
    /// A `data:image/...;base64,` URL or a `file://` URL.
    Url(String),
}

impl From<PathBuf> for ImageSource {
    fn from(path: PathBuf) -> Self {
        ImageSource::Path(path)
    }
}

impl From<&Path> for ImageSource {
    fn from(path: &Path) -> Self {
        ImageSource::Path(path.to_path_buf())
    }
}

impl From<Vec<u8>> for ImageSource {
    fn from(bytes: Vec<u8>) -> Self {
        ImageSource::Bytes(bytes)
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The text of the message.
    pub content: String,
    /// Images of the message, shown to the model before its text (as HF's
    /// and mlx-vlm's examples order them). Only vision models accept them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageSource>,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            images: Vec::new(),
        }
    }

    /// The message with `image` attached (after any already attached).
    pub fn with_image(mut self, image: ImageSource) -> Self {
        self.images.push(image);
        self
    }

    /// The message as a text template sees it: `content` is the text, or —
    /// when images are attached — OpenAI-style parts (see [`Self::to_parts_json`]).
    pub fn to_template_json(&self) -> serde_json::Value {
        if self.images.is_empty() {
            return serde_json::json!({"role": self.role, "content": self.content});
        }
        self.to_parts_json()
    }

    /// The message with `content` as OpenAI-style parts, images first.
    pub fn to_parts_json(&self) -> serde_json::Value {
        let mut parts: Vec<serde_json::Value> = self
            .images
            .iter()
            .map(|_| serde_json::json!({"type": "image"}))
            .collect();
        parts.push(serde_json::json!({"type": "text", "text": self.content}));
        serde_json::json!({"role": self.role, "content": parts})
    }
}

/// What besides the messages a template sees.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// End with the assistant-turn header so the model answers.
    pub add_generation_prompt: bool,
    /// The model's BOS token text (`bos_token` in the template).
    pub bos_token: Option<String>,
    /// The model's EOS token text (`eos_token` in the template).
    pub eos_token: Option<String>,
    /// Tool definitions (`tools`), if any.
    pub tools: Option<serde_json::Value>,
    /// Any other variables (`enable_thinking`, `documents`, ...).
    pub extra: Map<String, serde_json::Value>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    source_name: String,
    fallback: bool,
}

impl ChatTemplate {
    /// Compiles a template. `source_name` says where it came from, for errors.
    pub fn new(source: impl Into<String>, source_name: impl Into<String>) -> Result<Self, ChatTemplateError> {
        Self::build(source.into(), source_name.into(), false)
    }

    fn build(source: String, source_name: String, fallback: bool) -> Result<Self, ChatTemplateError> {
        let compiled = strip_generation_tags(&source);
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, compiled)
            .map_err(|e| ChatTemplateError::Syntax {
                source_name: source_name.clone(),
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            source,
            source_name,
            fallback,
        })
    }

    /// The documented fallback for models without a template.
    pub fn fallback() -> Self {
        match Self::build(FALLBACK_TEMPLATE.to_string(), "the built-in fallback".to_string(), true) {
            Ok(t) => t,
            // FALLBACK_TEMPLATE is a constant covered by tests.
            Err(e) => unreachable!("built-in fallback template is invalid: {e}"),
        }
    }

    /// The template of a Hugging Face model directory: `chat_template.jinja`,
    /// then `chat_template.json`, then `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of named templates of which
    /// `default` is used). `Ok(None)` if there is none.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Option<Self>, ChatTemplateError> {
        let dir = dir.as_ref();
        match template_source_from_dir(dir)? {
            Some(src) => Self::new(src, dir.display().to_string()).map(Some),
            None => Ok(None),
        }
    }

    /// The template in a parsed `tokenizer_config.json` (see [`ChatTemplate::from_dir`]).
    pub fn from_tokenizer_config(
        config: &serde_json::Value,
        source_name: &str,
    ) -> Result<Option<Self>, ChatTemplateError> {
        match template_from_config_value(config.get("chat_template"), Path::new(source_name))? {
            Some(src) => Self::new(src, source_name).map(Some),
            None => Ok(None),
        }
    }

    /// The template in a GGUF file's `tokenizer.chat_template`, if any.
    pub fn from_gguf(meta: &GgufMetadata) -> Result<Option<Self>, ChatTemplateError> {
        match meta.chat_template()? {
            Some(src) => Self::new(src, meta.path().display().to_string()).map(Some),
            None => Ok(None),
        }
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether this is the built-in fallback.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Renders `messages` to the prompt text.
    pub fn render(&self, messages: &[ChatMessage], options: &RenderOptions) -> Result<String, ChatTemplateError> {
        let messages: Vec<serde_json::Value> = messages.iter().map(ChatMessage::to_template_json).collect();
        self.render_json(&messages, options)
    }

    /// Renders `messages` with every `content` as OpenAI-style parts
    /// (`[{"type": "image"}…, {"type": "text", "text": …}]`), the form
    /// vision-language templates iterate over.
    pub fn render_parts(&self, messages: &[ChatMessage], options: &RenderOptions) -> Result<String, ChatTemplateError> {
        let messages: Vec<serde_json::Value> = messages.iter().map(ChatMessage::to_parts_json).collect();
        self.render_json(&messages, options)
    }

    /// Renders messages given as JSON objects (for messages with tool calls,
    /// images or other fields beyond `role`/`content`).
    pub fn render_json(
        &self,
        messages: &[serde_json::Value],
        options: &RenderOptions,
    ) -> Result<String, ChatTemplateError> {
        let mut ctx = options.extra.clone();
        ctx.insert("messages".into(), serde_json::Value::from(messages.to_vec()));
        ctx.insert("add_generation_prompt".into(), options.add_generation_prompt.into());
        if let Some(b) = &options.bos_token {
            ctx.insert("bos_token".into(), b.clone().into());
        }
        if let Some(e) = &options.eos_token {
            ctx.insert("eos_token".into(), e.clone().into());
        }
        if let Some(t) = &options.tools {
            ctx.insert("tools".into(), t.clone());
        }
        let render_err = |e: Error| ChatTemplateError::Render {
            source_name: self.source_name.clone(),
            message: describe(&e),
        };
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(render_err)?;
        tmpl.render(Value::from_serialize(&ctx)).map_err(render_err)
    }
}

/// Removes `{% generation %}` / `{% endgeneration %}`: transformers' marks
/// of assistant text for training masks (llava-hf's templates use them),
/// which change nothing in the rendered text.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = rest.find("{%") {
        let Some(len) = rest[open..].find("%}") else { break };
        let tag = &rest[open + 2..open + len];
        let name = tag.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..open]);
        if name != "generation" && name != "endgeneration" {
            out.push_str(&rest[open..open + len + 2]);
        }
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// minijinja's error text plus its cause chain (a `raise_exception` message
/// sits in the cause).
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Finds a model directory's template source (see [`ChatTemplate::from_dir`]).
pub fn template_source_from_dir(dir: &Path) -> Result<Option<String>, ChatTemplateError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| ChatTemplateError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let read_json = |path: &Path| -> Result<serde_json::Value, ChatTemplateError> {
        serde_json::from_str(&read(path)?).map_err(|e| ChatTemplateError::BadConfig {
            path: path.to_path_buf(),
            reason: format!("not valid JSON ({e})"),
        })
    };
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return read(&jinja).map(Some);
    }
    for name in ["chat_template.json", "tokenizer_config.json"] {
        let path = dir.join(name);
        if path.is_file() {
            let v = read_json(&path)?;
            if let Some(src) = template_from_config_value(v.get("chat_template"), &path)? {
                return Ok(Some(src));
            }
        }
    }
    Ok(None)
}

fn template_from_config_value(v: Option<&serde_json::Value>, path: &Path) -> Result<Option<String>, ChatTemplateError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named = |n: &str| {
                list.iter().find_map(|t| {
                    (t.get("name")?.as_str()? == n).then(|| t.get("template")?.as_str().map(str::to_string))?
                })
            };
            match named("default") {
                Some(s) => Ok(Some(s)),
                None => Err(ChatTemplateError::BadConfig {
                    path: path.to_path_buf(),
                    reason: "chat_template is a list without a template named \"default\"".into(),
                }),
            }
        }
        Some(_) => Err(ChatTemplateError::BadConfig {
            path: path.to_path_buf(),
            reason: "chat_template is neither a string nor a list of named templates".into(),
        }),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`,
/// which is what transformers' `tojson` filter does.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    // transformers also accepts these; they have Python's defaults here.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: value is not JSON: {e}")))?;
    let mut out = String::new();
    py_dumps(&json, indent, sort_keys.unwrap_or(false), 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn py_dumps(v: &serde_json::Value, indent: Option<usize>, sort: bool, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                py_dumps(x, indent, sort, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(o) if !o.is_empty() => {
            let mut entries: Vec<(&String, &J)> = o.iter().collect();
            if sort {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&J::String(k.clone()).to_string());
                out.push_str(": ");
                py_dumps(x, indent, sort, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// transformers' `strftime_now(format)`: the current UTC time, formatted.
/// Supports the directives templates use: %Y %m %d %e %B %b %H %M %S %A %a %%.
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(format_time(secs, &format)))
}

fn format_time(secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let month = MONTHS[(m - 1) as usize];
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('B') => out.push_str(month),
            Some('b') => out.push_str(&month[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_renders_role_lines() {
        let t = ChatTemplate::fallback();
        assert!(t.is_fallback());
        let out = t
            .render(
                &[ChatMessage::new("system", "Be nice."), ChatMessage::new("user", "Hi")],
                &RenderOptions {
                    add_generation_prompt: true,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(out, "system: Be nice.\nuser: Hi\nassistant:");
    }

    #[test]
    fn format_time_known_dates() {
        assert_eq!(format_time(0, "%d %b %Y %H:%M:%S %A"), "01 Jan 1970 00:00:00 Thursday");
        // 2024-02-29 12:34:56 UTC, a leap day.
        assert_eq!(
            format_time(1_709_210_096, "%Y-%m-%d %B %a %H:%M:%S"),
            "2024-02-29 February Thu 12:34:56"
        );
    }

    #[test]
    fn tojson_matches_python() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}", "test").unwrap();
        let mut extra = Map::new();
        extra.insert("x".into(), serde_json::json!({"b": [1, "é<>"], "a": {}}));
        let out = t
            .render(
                &[],
                &RenderOptions {
                    extra,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, \"é<>\"], \"a\": {}}|{\n  \"b\": [\n    1,\n    \"é<>\"\n  ],\n  \"a\": {}\n}"
        );
    }

    #[test]
    fn syntax_error_is_reported() {
        let e = ChatTemplate::new("{% for %}", "broken.jinja").unwrap_err();
        assert!(matches!(e, ChatTemplateError::Syntax { .. }), "{e}");
        assert!(e.to_string().contains("broken.jinja"));
    }
}
