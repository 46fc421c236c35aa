//! Element types of arrays.

use std::fmt;

/// The element type of an [`crate::Array`]. Discriminants are the codes the
/// C++ shim uses (the order of `mlx::core::Dtype::Val`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Dtype {
    /// Boolean.
    Bool = 0,
    /// Unsigned 8-bit integer.
    Uint8 = 1,
    /// Unsigned 16-bit integer.
    Uint16 = 2,
    /// Unsigned 32-bit integer.
    Uint32 = 3,
    /// Unsigned 64-bit integer.
    Uint64 = 4,
    /// Signed 8-bit integer.
    Int8 = 5,
    /// Signed 16-bit integer.
    Int16 = 6,
    /// Signed 32-bit integer.
    Int32 = 7,
    /// Signed 64-bit integer.
    Int64 = 8,
    /// IEEE half precision.
    Float16 = 9,
    /// IEEE single precision.
    Float32 = 10,
    /// IEEE double precision (CPU only in MLX).
    Float64 = 11,
    /// Brain floating point.
    Bfloat16 = 12,
    /// Complex of two f32.
    Complex64 = 13,
}

impl Dtype {
    pub(crate) fn from_code(code: u8) -> Dtype {
        use Dtype::*;
        match code {
            0 => Bool,
            1 => Uint8,
            2 => Uint16,
            3 => Uint32,
            4 => Uint64,
            5 => Int8,
            6 => Int16,
            7 => Int32,
            8 => Int64,
            9 => Float16,
            10 => Float32,
            11 => Float64,
            12 => Bfloat16,
            _ => Complex64,
        }
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        use Dtype::*;
        match self {
            Bool | Uint8 | Int8 => 1,
            Uint16 | Int16 | Float16 | Bfloat16 => 2,
            Uint32 | Int32 | Float32 => 4,
            Uint64 | Int64 | Float64 | Complex64 => 8,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::Float16 | Dtype::Float32 | Dtype::Float64 | Dtype::Bfloat16)
    }

    /// The name used in configs and safetensors headers (`float32`, `bfloat16`, ...).
    pub fn name(self) -> &'static str {
        use Dtype::*;
        match self {
            Bool => "bool",
            Uint8 => "uint8",
            Uint16 => "uint16",
            Uint32 => "uint32",
            Uint64 => "uint64",
            Int8 => "int8",
            Int16 => "int16",
            Int32 => "int32",
            Int64 => "int64",
            Float16 => "float16",
            Float32 => "float32",
            Float64 => "float64",
            Bfloat16 => "bfloat16",
            Complex64 => "complex64",
        }
    }

    /// Parses a dtype name as written in Hugging Face configs (`torch_dtype`).
    pub fn from_name(name: &str) -> Option<Dtype> {
        use Dtype::*;
        Some(match name {
            "float32" | "f32" | "fp32" => Float32,
            "float16" | "f16" | "fp16" | "half" => Float16,
            "bfloat16" | "bf16" => Bfloat16,
            "float64" | "f64" => Float64,
            "int32" => Int32,
            "int64" => Int64,
            "uint8" => Uint8,
            "uint32" => Uint32,
            "bool" => Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that maps one-to-one onto an MLX element type.
pub trait Element: bytemuck::Pod {
    /// The MLX dtype of this Rust type.
    const DTYPE: Dtype;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => { $(impl Element for $t { const DTYPE: Dtype = Dtype::$d; })* };
}
element! {
    u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    f32 => Float32, f64 => Float64,
    half::f16 => Float16, half::bf16 => Bfloat16,
}
