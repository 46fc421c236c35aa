//! A pure-Rust reader for the header of GGUF files (versions 2 and 3).
//!
//! It reads the metadata key/values and the tensor infos, never the tensor
//! data: the MLX binding loads the weights itself. Every length read from the
//! file is checked against the file size before anything is allocated, so a
//! corrupt or truncated file gives a clear [`GgufError`] instead of a panic or
//! a giant allocation.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Tensor data alignment used when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Most dimensions a GGUF tensor may have (llama.cpp's `GGML_MAX_DIMS` is 4;
/// anything past 8 is certainly corruption).
const MAX_DIMS: u32 = 8;

/// Errors reading a GGUF file. Each message names the file, the problem and
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("cannot read GGUF file {path}: {source}; check that the path exists and is readable")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic.
    #[error(
        "{path} is not a GGUF file (it starts with {found:?}, expected \"GGUF\"); \
         point at a .gguf model file, or re-download it if it should be one"
    )]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// The first bytes found.
        found: String,
    },
    /// A GGUF version this reader does not know.
    #[error(
        "{path} is GGUF version {version}, which is not supported (supported: 2 and 3); \
         re-convert the model with a current llama.cpp"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the header.
        version: u32,
    },
    /// The file ends before the data its header describes.
    #[error(
        "{path} is truncated: {what} but the file ends at byte {file_len} \
         — the download is incomplete; delete it and pull again"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read, and how far it needed the file to go.
        what: String,
        /// The actual file size in bytes.
        file_len: u64,
    },
    /// The header holds a value that cannot be right.
    #[error("{path} is corrupt at byte {offset}: {reason}; delete it and pull again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the bad value.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A metadata key the caller needs is absent.
    #[error("{path} has no metadata key `{key}`; the file was converted without it — re-convert the model with a current llama.cpp")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata key holds a value of another type than expected.
    #[error(
        "{path}: metadata key `{key}` holds {found}, expected {expected}; the file is malformed — re-convert the model"
    )]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The expected type.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `float32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// `string` (invalid UTF-8 is replaced with U+FFFD)
    String(String),
    /// `array` of values of one type
    Array(Vec<GgufValue>),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float64`
    F64(f64),
}

impl GgufValue {
    /// The GGUF name of this value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "uint8",
            GgufValue::I8(_) => "int8",
            GgufValue::U16(_) => "uint16",
            GgufValue::I16(_) => "int16",
            GgufValue::U32(_) => "uint32",
            GgufValue::I32(_) => "int32",
            GgufValue::F32(_) => "float32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "uint64",
            GgufValue::I64(_) => "int64",
            GgufValue::F64(_) => "float64",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            // Precision loss on huge integers is acceptable for a float accessor.
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A ggml tensor element type, as stored in the tensor infos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// `(name, elements per block, bytes per block)` for the types llama.cpp
    /// knows; `None` for an id this reader does not know.
    pub fn info(self) -> Option<(&'static str, u64, u64)> {
        // Mirrors ggml's type_traits table (and gguf-py's GGML_QUANT_SIZES).
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 40),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            40 => ("NVFP4", 64, 36),
            41 => ("Q1_0", 128, 18),
            _ => return None,
        })
    }

    /// The type's name (`"Q4_1"`), or `None` if unknown.
    pub fn name(self) -> Option<&'static str> {
        self.info().map(|(n, _, _)| n)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "ggml type {}", self.0),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order (fastest-varying first, the reverse of NumPy order).
    pub shape: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the tensor data section.
    pub offset: u64,
    /// Absolute offset of the first byte in the file.
    pub file_offset: u64,
    /// Size of the tensor data in bytes, if the type is known.
    pub n_bytes: Option<u64>,
}

impl GgufTensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The parsed header of a GGUF file: metadata and tensor infos.
#[derive(Debug, Clone)]
pub struct GgufMetadata {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_offset: u64,
    file_len: u64,
}

impl GgufMetadata {
    /// Reads the header of the GGUF file at `path` (metadata and tensor infos,
    /// not the tensor data), checking that the file is long enough to hold
    /// every tensor it describes.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        Self::read_from(BufReader::new(file), file_len, path)
    }

    /// Reads a GGUF header from any reader holding `len` bytes; `path` is only
    /// used in error messages.
    pub fn read_from(reader: impl Read, len: u64, path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let mut r = Cursor {
            inner: reader,
            pos: 0,
            len,
            path: path.as_ref().to_path_buf(),
        };
        let magic: [u8; 4] = r.array("the magic bytes")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::NotGguf {
                path: r.path,
                found: String::from_utf8_lossy(&magic).into_owned(),
            });
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { path: r.path, version });
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        // Each key/value needs at least 8 (key length) + 4 (type) bytes, each
        // tensor info at least 8 + 4 + 4 + 8; checking that bounds the loops.
        r.ensure_room(n_kv.saturating_mul(12), || {
            format!("the header says {n_kv} metadata entries")
        })?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("the type of metadata `{key}`"))?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        r.ensure_room(n_tensors.saturating_mul(24), || {
            format!("the header says {n_tensors} tensors")
        })?;
        let mut tensors = Vec::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor #{i}"))?;
            let n_dims_at = r.pos;
            let n_dims = r.u32(&format!("the rank of tensor `{name}`"))?;
            if n_dims > MAX_DIMS {
                return Err(r.corrupt(
                    n_dims_at,
                    format!("tensor `{name}` claims {n_dims} dimensions (at most {MAX_DIMS} are possible)"),
                ));
            }
            let mut shape = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                shape.push(r.u64(&format!("the shape of tensor `{name}`"))?);
            }
            let ggml_type = GgmlType(r.u32(&format!("the type of tensor `{name}`"))?);
            let offset = r.u64(&format!("the offset of tensor `{name}`"))?;
            tensors.push((i, name, shape, ggml_type, offset));
        }
        let header_end = r.pos;
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(GgufError::Corrupt {
                        path: r.path,
                        offset: header_end,
                        reason: format!("general.alignment is {v:?}, not a power of two"),
                    })
                }
            },
        };
        let data_offset = header_end.div_ceil(alignment).saturating_mul(alignment);
        let path = r.path;
        let mut infos = Vec::with_capacity(tensors.len());
        for (i, name, shape, ggml_type, offset) in tensors {
            let n_elements = shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| GgufError::Corrupt {
                    path: path.clone(),
                    offset: header_end,
                    reason: format!("tensor `{name}` has an impossible shape {shape:?}"),
                })?;
            let n_bytes = ggml_type
                .info()
                .map(|(_, block, bytes)| n_elements.div_ceil(block).saturating_mul(bytes));
            let file_offset = data_offset.saturating_add(offset);
            let end = file_offset.saturating_add(n_bytes.unwrap_or(0));
            if end > len {
                return Err(GgufError::Truncated {
                    path,
                    what: format!("the header says {n_tensors} tensors and tensor #{i} `{name}` ends at byte {end}"),
                    file_len: len,
                });
            }
            infos.push(GgufTensorInfo {
                name,
                shape,
                ggml_type,
                offset,
                file_offset,
                n_bytes,
            });
        }
        Ok(GgufMetadata {
            path,
            version,
            metadata,
            tensors: infos,
            data_offset,
            file_len: len,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Absolute offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, sorted by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        f: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| GgufError::WrongType {
                path: self.path.clone(),
                key: key.to_string(),
                expected,
                found: v.type_name(),
            }),
        }
    }

    /// `key` as a string; `Ok(None)` if absent, an error if of another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "a string", GgufValue::as_str)
    }

    /// `key` as an unsigned integer; `Ok(None)` if absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    /// `key` as a signed integer; `Ok(None)` if absent.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.typed(key, "an integer", GgufValue::as_i64)
    }

    /// `key` as a float; `Ok(None)` if absent.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, "a number", GgufValue::as_f64)
    }

    /// `key` as a bool; `Ok(None)` if absent.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }

    /// `key` as an array; `Ok(None)` if absent.
    pub fn get_array(&self, key: &str) -> Result<Option<&[GgufValue]>, GgufError> {
        self.typed(key, "an array", GgufValue::as_array)
    }

    /// `key` as an array of strings; `Ok(None)` if absent.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.typed(key, "an array of strings", |v| {
            v.as_array()?.iter().map(GgufValue::as_str).collect()
        })
    }

    /// An error saying `key` is missing, for callers that need it.
    pub fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        }
    }

    /// `general.architecture`, e.g. `"llama"`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")?
            .ok_or_else(|| self.missing("general.architecture"))
    }

    /// `general.name`, if present.
    pub fn name(&self) -> Result<Option<&str>, GgufError> {
        self.get_str("general.name")
    }

    /// An architecture-scoped integer such as `{arch}.context_length`.
    pub fn arch_u64(&self, suffix: &str) -> Result<Option<u64>, GgufError> {
        let key = format!("{}.{suffix}", self.architecture()?);
        self.get_u64(&key)
    }

    /// `{arch}.context_length`: the context window the model was trained for.
    pub fn context_length(&self) -> Result<Option<u64>, GgufError> {
        self.arch_u64("context_length")
    }

    /// `{arch}.embedding_length`: the hidden size.
    pub fn embedding_length(&self) -> Result<Option<u64>, GgufError> {
        self.arch_u64("embedding_length")
    }

    /// `{arch}.block_count`: the number of transformer layers.
    pub fn block_count(&self) -> Result<Option<u64>, GgufError> {
        self.arch_u64("block_count")
    }

    /// `{arch}.attention.head_count`.
    pub fn head_count(&self) -> Result<Option<u64>, GgufError> {
        self.arch_u64("attention.head_count")
    }

    /// `{arch}.attention.head_count_kv`.
    pub fn head_count_kv(&self) -> Result<Option<u64>, GgufError> {
        self.arch_u64("attention.head_count_kv")
    }

    /// `tokenizer.chat_template`, if the file carries one.
    pub fn chat_template(&self) -> Result<Option<&str>, GgufError> {
        self.get_str("tokenizer.chat_template")
    }

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`), if present.
    pub fn file_type(&self) -> Result<Option<u64>, GgufError> {
        self.get_u64("general.file_type")
    }
}

/// A reader that tracks its position and knows the total length, so every
/// length field can be checked before allocating.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
    path: PathBuf,
}

impl<R: Read> Cursor<R> {
    fn corrupt(&self, offset: u64, reason: String) -> GgufError {
        GgufError::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    fn truncated(&self, what: String) -> GgufError {
        GgufError::Truncated {
            path: self.path.clone(),
            what,
            file_len: self.len,
        }
    }

    /// Errors unless `n` more bytes fit in the file.
    fn ensure_room(&self, n: u64, what: impl FnOnce() -> String) -> Result<(), GgufError> {
        let end = self.pos.saturating_add(n);
        if end > self.len {
            return Err(self.truncated(format!("{} (at least {end} bytes)", what())));
        }
        Ok(())
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, GgufError> {
        self.ensure_room(n, || {
            format!("{what} needs bytes {}..{}", self.pos, self.pos.saturating_add(n))
        })?;
        // `n` is bounded by the file size now, so the allocation is sane.
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.truncated(format!("{what} needs bytes up to {}", self.pos + n))
            } else {
                GgufError::Io {
                    path: self.path.clone(),
                    source: e,
                }
            }
        })?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let v = self.bytes(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&v);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        let bytes = self.bytes(n, what)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue, GgufError> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(key)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(key)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => {
                let at = self.pos;
                match self.array::<1>(key)?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => return Err(self.corrupt(at, format!("metadata `{key}` is a bool holding {b}"))),
                }
            }
            8 => GgufValue::String(self.string(key)?),
            9 => {
                let at = self.pos;
                if depth > 4 {
                    return Err(self.corrupt(at, format!("metadata `{key}` nests arrays too deeply")));
                }
                let elem_ty = self.u32(key)?;
                let count = self.u64(key)?;
                let min_size = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => {
                        return Err(self.corrupt(at, format!("metadata `{key}` is an array of unknown type {elem_ty}")))
                    }
                };
                self.ensure_room(count.saturating_mul(min_size), || {
                    format!("metadata `{key}` says it holds {count} values")
                })?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(key)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            _ => {
                let at = self.pos.saturating_sub(4);
                return Err(self.corrupt(at, format!("metadata `{key}` has unknown value type {ty}")));
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a tiny but valid GGUF v3 file with two tensors.
    pub(crate) fn tiny_gguf() -> Vec<u8> {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(2u64.to_le_bytes()); // tensors
        b.extend(4u64.to_le_bytes()); // kv
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "llama.context_length");
        b.extend(4u32.to_le_bytes());
        b.extend(2048u32.to_le_bytes());
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "a");
        s(&mut b, "b");
        s(&mut b, "flag");
        b.extend(7u32.to_le_bytes());
        b.push(1);
        s(&mut b, "w");
        b.extend(2u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(0u32.to_le_bytes()); // F32
        b.extend(0u64.to_le_bytes());
        s(&mut b, "q");
        b.extend(1u32.to_le_bytes());
        b.extend(64u64.to_le_bytes());
        b.extend(3u32.to_le_bytes()); // Q4_1
        b.extend(32u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.extend(vec![0u8; 32 + 40]);
        b
    }

    fn read(bytes: &[u8]) -> Result<GgufMetadata, GgufError> {
        GgufMetadata::read_from(bytes, bytes.len() as u64, "test.gguf")
    }

    #[test]
    fn reads_tiny_file() {
        let m = read(&tiny_gguf()).expect("valid file");
        assert_eq!(m.version(), 3);
        assert_eq!(m.architecture().unwrap(), "llama");
        assert_eq!(m.context_length().unwrap(), Some(2048));
        assert_eq!(m.get_bool("flag").unwrap(), Some(true));
        assert_eq!(m.get_str_array("tokenizer.ggml.tokens").unwrap(), Some(vec!["a", "b"]));
        assert!(matches!(m.get_str("flag"), Err(GgufError::WrongType { .. })));
        assert_eq!(m.tensors().len(), 2);
        assert_eq!(m.tensors()[1].ggml_type.name(), Some("Q4_1"));
        assert_eq!(m.tensors()[1].n_bytes, Some(40));
        assert_eq!(m.tensors()[0].shape, vec![4, 2]);
        assert_eq!(m.data_offset() % 32, 0);
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let full = tiny_gguf();
        for cut in 0..full.len() {
            let err = read(&full[..cut]).expect_err("truncated file must fail");
            let msg = err.to_string();
            assert!(matches!(err, GgufError::Truncated { .. }), "cut at {cut}: {msg}");
            assert!(msg.contains("test.gguf") && msg.contains("pull again"), "{msg}");
        }
    }

    #[test]
    fn huge_lengths_do_not_allocate() {
        let mut b = tiny_gguf();
        // The length of the first key string: make it absurd.
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read(&b), Err(GgufError::Truncated { .. })));
        let mut b = tiny_gguf();
        b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(read(&b), Err(GgufError::Truncated { .. })));
    }

    #[test]
    fn flipping_any_byte_never_panics() {
        let full = tiny_gguf();
        for i in 0..full.len() {
            for v in [0u8, 0xff, 0x7f, 9] {
                let mut b = full.clone();
                b[i] = v;
                let _ = read(&b);
            }
        }
    }

    #[test]
    fn wrong_magic_and_version() {
        let mut b = tiny_gguf();
        b[0] = b'X';
        assert!(matches!(read(&b), Err(GgufError::NotGguf { .. })));
        let mut b = tiny_gguf();
        b[4] = 9;
        let e = read(&b).unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
    }
}
