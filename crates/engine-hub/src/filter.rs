//! Which files of a repo to pull: allow and ignore patterns with the
//! semantics of `huggingface_hub`'s `allow_patterns` / `ignore_patterns`
//! (`fnmatch`: `*` also matches `/`; a pattern ending in `/` means the folder).

use engine_core::ModelType;

/// Allow/ignore patterns. A file is pulled when it matches an allow pattern
/// (or there are none) and matches no ignore pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFilter {
    /// Patterns a file must match one of; empty means every file.
    pub allow: Vec<String>,
    /// Patterns that exclude a file.
    pub ignore: Vec<String>,
}

impl FileFilter {
    /// Every file.
    pub fn all() -> Self {
        Self::default()
    }

    /// Files matching any of `allow`.
    pub fn allow<S: Into<String>>(allow: impl IntoIterator<Item = S>) -> Self {
        FileFilter {
            allow: allow.into_iter().map(Into::into).collect(),
            ignore: Vec::new(),
        }
    }

    /// Adds ignore patterns.
    pub fn ignoring<S: Into<String>>(mut self, ignore: impl IntoIterator<Item = S>) -> Self {
        self.ignore.extend(ignore.into_iter().map(Into::into));
        self
    }

    /// What an MLX model of `model_type` needs: weights as safetensors,
    /// configs, tokenizer files and chat templates; no PyTorch, TF, Flax,
    /// ONNX or GGUF duplicates of the weights. Diffusion pipelines keep their
    /// sub-folders (`unet/`, `vae/`, `text_encoder/`, …).
    pub fn for_model_type(model_type: ModelType) -> Self {
        let mut allow = vec![
            "*.safetensors",
            "*.safetensors.index.json",
            "*.json",
            "*.txt",
            "*.model",
            "*.tiktoken",
            "*.jinja",
        ];
        if model_type == ModelType::Diffusion {
            allow.push("*.npz");
        }
        FileFilter::allow(allow).ignoring([
            "*.bin",
            "*.pt",
            "*.pth",
            "*.ckpt",
            "*.h5",
            "*.msgpack",
            "*.onnx",
            "*.onnx_data",
            "*.ot",
            "*.gguf",
            "original/*",
            "onnx/*",
            "openvino/*",
        ])
    }

    /// True when `name` is to be pulled.
    pub fn matches(&self, name: &str) -> bool {
        let hit = |p: &String| fnmatch(&expand(p), name);
        (self.allow.is_empty() || self.allow.iter().any(hit)) && !self.ignore.iter().any(hit)
    }
}

impl std::fmt::Display for FileFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.allow.is_empty(), self.ignore.is_empty()) {
            (true, true) => f.write_str("all files"),
            (false, true) => write!(f, "files matching {}", self.allow.join(", ")),
            (true, false) => write!(f, "all files except {}", self.ignore.join(", ")),
            (false, false) => write!(
                f,
                "files matching {} except {}",
                self.allow.join(", "),
                self.ignore.join(", ")
            ),
        }
    }
}

/// `dir/` means everything below `dir/` (as `huggingface_hub` does).
fn expand(p: &str) -> String {
    if p.ends_with('/') {
        format!("{p}*")
    } else {
        p.to_string()
    }
}

/// Python `fnmatch.fnmatchcase`: `*` any run (including `/`), `?` one
/// character, `[seq]` / `[!seq]` a set with ranges.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = match_set(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        // An unclosed `[` is a literal.
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the set starting at `p[start] == '['`; returns
/// (matched, index after `]`), or `None` when the set is not closed.
fn match_set(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && (p[i] == '!' || p[i] == '^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (p[i] != ']' || first) {
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    (i < p.len()).then_some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_semantics() {
        assert!(fnmatch("*.json", "config.json"));
        assert!(fnmatch("*.json", "sub/dir/config.json"));
        assert!(!fnmatch("*.json", "config.json.bak"));
        assert!(fnmatch(
            "model-?????-of-*.safetensors",
            "model-00001-of-00002.safetensors"
        ));
        assert!(fnmatch("[a-c]x", "bx"));
        assert!(!fnmatch("[!a-c]x", "bx"));
        assert!(fnmatch("a[x", "a[x"));
        assert!(fnmatch("*", ""));
        assert!(!fnmatch("?", ""));
    }

    #[test]
    fn filters() {
        let f = FileFilter::for_model_type(ModelType::Llm);
        for yes in [
            "config.json",
            "model.safetensors",
            "tokenizer.model",
            "chat_template.jinja",
            "merges.txt",
        ] {
            assert!(f.matches(yes), "{yes}");
        }
        for no in [
            "pytorch_model.bin",
            "model.gguf",
            "original/params.json",
            "README.md",
            ".gitattributes",
        ] {
            assert!(!f.matches(no), "{no}");
        }
        let d = FileFilter::for_model_type(ModelType::Diffusion);
        assert!(d.matches("unet/diffusion_pytorch_model.safetensors"));
        assert!(FileFilter::all().matches("anything"));
        assert!(FileFilter::allow(["sub/"]).matches("sub/a/b"));
        assert!(!FileFilter::allow(["sub/"]).matches("other/a"));
    }
}
