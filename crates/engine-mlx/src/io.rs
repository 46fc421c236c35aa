//! Loading and saving weights: safetensors and GGUF into a name-keyed
//! [`WeightMap`] that layers take their parameters from.

use crate::array::{list, wrap};
use crate::error::{Context, Error, Result};
use crate::{ffi, Array};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A metadata value of a weight file.
#[derive(Debug, Clone)]
pub enum MetaValue {
    /// A string (all safetensors metadata is strings).
    String(String),
    /// A list of strings (GGUF string arrays, e.g. tokenizer vocabularies).
    Strings(Vec<String>),
    /// A number or numeric array (GGUF scalars and arrays).
    Array(Array),
    /// A value MLX does not expose.
    Unsupported,
}

/// Named tensors (plus the file's metadata) from one or more weight files.
#[derive(Debug, Clone, Default)]
pub struct WeightMap {
    tensors: HashMap<String, Array>,
    metadata: BTreeMap<String, MetaValue>,
    origin: String,
}

fn checked_path(path: &Path) -> Result<String> {
    if !path.exists() {
        return Err(Error::Load {
            path: path.to_path_buf(),
            message: "no such file; check the path or download the model again".into(),
        });
    }
    path.to_str().map(str::to_string).ok_or_else(|| Error::Load {
        path: path.to_path_buf(),
        message: "the path is not valid UTF-8; move the model to a UTF-8 path".into(),
    })
}

fn read(file: &ffi::WeightFile, origin: String) -> Result<WeightMap> {
    let mut tensors = HashMap::new();
    for i in 0..ffi::wf_len(file) {
        tensors.insert(ffi::wf_name(file, i).op("load")?, wrap(ffi::wf_array(file, i), "load")?);
    }
    let mut metadata = BTreeMap::new();
    for i in 0..ffi::wf_meta_len(file) {
        let key = ffi::wf_meta_key(file, i).op("load")?;
        let value = match ffi::wf_meta_kind(file, i).op("load")? {
            1 => MetaValue::String(ffi::wf_meta_string(file, i).op("load")?),
            2 => MetaValue::Strings(ffi::wf_meta_list(file, i).op("load")?),
            3 => MetaValue::Array(wrap(ffi::wf_meta_array(file, i), "load")?),
            _ => MetaValue::Unsupported,
        };
        metadata.insert(key, value);
    }
    Ok(WeightMap {
        tensors,
        metadata,
        origin,
    })
}

impl WeightMap {
    /// Loads a `.safetensors` file (lazily: data is read when first used).
    pub fn load_safetensors(path: impl AsRef<Path>) -> Result<WeightMap> {
        let path = path.as_ref();
        let p = checked_path(path)?;
        let file = ffi::load_safetensors(&p).map_err(|e| Error::Load {
            path: path.to_path_buf(),
            message: format!(
                "{} — the file is not valid safetensors (truncated or corrupt?); delete it and download it again",
                e.what()
            ),
        })?;
        read(&file, path.display().to_string())
    }

    /// Loads every `*.safetensors` file of a folder (sharded checkpoints).
    pub fn load_safetensors_dir(dir: impl AsRef<Path>) -> Result<WeightMap> {
        let dir = dir.as_ref();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::Load {
                path: dir.to_path_buf(),
                message: format!("cannot list the folder: {e}"),
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::Load {
                path: dir.to_path_buf(),
                message: "no .safetensors files in this folder; is the download complete?".into(),
            });
        }
        let mut all = WeightMap {
            origin: dir.display().to_string(),
            ..Default::default()
        };
        for f in files {
            let m = WeightMap::load_safetensors(&f)?;
            all.tensors.extend(m.tensors);
            all.metadata.extend(m.metadata);
        }
        Ok(all)
    }

    /// Loads a `.gguf` file. MLX maps Q4_0, Q4_1 and Q8_0 tensors onto its
    /// affine layout: `name` (packed), `name`'s `.scales` and `.biases`
    /// siblings (the `weight` suffix replaced).
    pub fn load_gguf(path: impl AsRef<Path>) -> Result<WeightMap> {
        let path = path.as_ref();
        let p = checked_path(path)?;
        let file = ffi::load_gguf(&p).map_err(|e| Error::Load {
            path: path.to_path_buf(),
            message: format!("{} — the GGUF file is truncated, corrupt or uses an unsupported tensor type; delete it and download it again", e.what()),
        })?;
        read(&file, path.display().to_string())
    }

    /// Builds a map from arrays in memory.
    pub fn from_arrays(tensors: impl IntoIterator<Item = (String, Array)>, origin: &str) -> WeightMap {
        WeightMap {
            tensors: tensors.into_iter().collect(),
            metadata: BTreeMap::new(),
            origin: origin.into(),
        }
    }

    /// Where these weights came from (for messages).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The tensor `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Array> {
        self.tensors.get(name).ok_or_else(|| Error::MissingWeight {
            name: name.into(),
            source_desc: self.origin.clone(),
        })
    }

    /// The tensor `name`, checking its shape.
    pub fn get_shaped(&self, name: &str, expected: &[usize]) -> Result<Array> {
        let a = self.get(name)?;
        let actual = a.shape();
        if actual != expected {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                expected: expected.iter().map(|&d| d as i32).collect(),
                actual: actual.iter().map(|&d| d as i32).collect(),
            });
        }
        Ok(a.clone())
    }

    /// The tensor if present.
    pub fn try_get(&self, name: &str) -> Option<&Array> {
        self.tensors.get(name)
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns a tensor.
    pub fn remove(&mut self, name: &str) -> Option<Array> {
        self.tensors.remove(name)
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, a: Array) {
        self.tensors.insert(name.into(), a);
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Renames every tensor with `f` (checkpoint-name fix-ups); names mapped to `None` are dropped.
    pub fn rename(self, mut f: impl FnMut(&str) -> Option<String>) -> WeightMap {
        let tensors = self
            .tensors
            .into_iter()
            .filter_map(|(k, v)| f(&k).map(|n| (n, v)))
            .collect();
        WeightMap { tensors, ..self }
    }

    /// The file metadata.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// A string metadata value.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key) {
            Some(MetaValue::String(s)) => Some(s),
            _ => None,
        }
    }

    /// A numeric scalar metadata value as f64.
    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        match self.metadata.get(key) {
            Some(MetaValue::Array(a)) if a.size() == 1 => a.item_f64().ok(),
            _ => None,
        }
    }

    /// Total bytes of all tensors.
    pub fn nbytes(&self) -> usize {
        self.tensors.values().map(Array::nbytes).sum()
    }

    /// Iterates (name, tensor).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Array)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// Writes arrays (and string metadata) to a `.safetensors` file.
pub fn save_safetensors(path: impl AsRef<Path>, tensors: &[(&str, &Array)], metadata: &[(&str, &str)]) -> Result<()> {
    let path = path.as_ref();
    let p = path
        .to_str()
        .ok_or_else(|| Error::Invalid(format!("{} is not a UTF-8 path", path.display())))?;
    let names: Vec<String> = tensors.iter().map(|(n, _)| n.to_string()).collect();
    let arrays = list(tensors.iter().map(|(_, a)| *a));
    let keys: Vec<String> = metadata.iter().map(|(k, _)| k.to_string()).collect();
    let values: Vec<String> = metadata.iter().map(|(_, v)| v.to_string()).collect();
    ffi::save_safetensors(p, &names, &arrays, &keys, &values).op("save_safetensors")
}
