//! Safe Rust bindings to MLX (C++ API, through `cxx`) and the neural-network
//! layers MLXEngine's models are built from.
//!
//! ```no_run
//! use engine_mlx::{Array, Dtype};
//! let a = Array::from_slice(&[1.0f32, 2.0, 3.0, 4.0], &[2, 2])?;
//! let b = a.matmul(&a)?;
//! assert_eq!(b.to_vec::<f32>()?, vec![7.0, 10.0, 15.0, 22.0]);
//! # Ok::<(), engine_mlx::Error>(())
//! ```
#![warn(missing_docs)]

mod array;
mod compile;
mod device;
pub mod distributed;
mod dtype;
mod error;
pub mod fast;
mod ffi;
mod io;
pub mod nn;
pub mod quant;
pub mod random;

pub use array::{async_eval, concatenate, conv1d, conv2d, eval, stack, upsample_nearest, where_, Array};
pub use compile::{compile, Compiled};
pub use device::{
    backend, blas, blas_core, blas_library, default_device, device_info, gpu_available, memory, mlx_version,
    set_blas_threads, set_default_device, synchronize, Backend, Device, Stream,
};
pub use dtype::{Dtype, Element};
pub use error::{Error, Result};
pub use io::{save_safetensors, MetaValue, WeightMap};
