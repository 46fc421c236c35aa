//! Group-wise affine quantization (MLX's format: packed uint32 weights with
//! per-group scales and biases).

use crate::array::{list, opt_list, unlist, wrap};
use crate::error::{Context, Error, Result};
use crate::{ffi, Array};

/// Quantization settings of a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    /// Elements sharing one scale and bias (32, 64 or 128).
    pub group_size: i32,
    /// Bits per element (2, 3, 4, 5, 6 or 8).
    pub bits: i32,
}

impl QuantSpec {
    /// Checks the settings MLX supports, with a message naming the fix.
    pub fn validate(self) -> Result<Self> {
        if ![32, 64, 128].contains(&self.group_size) {
            return Err(Error::Invalid(format!(
                "quantization group size {} is not supported; use 32, 64 or 128",
                self.group_size
            )));
        }
        if ![2, 3, 4, 5, 6, 8].contains(&self.bits) {
            return Err(Error::Invalid(format!(
                "{}-bit quantization is not supported; use 2, 3, 4, 5, 6 or 8 bits",
                self.bits
            )));
        }
        Ok(self)
    }
}

/// A quantized matrix: packed weights, scales and biases.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// Packed weights (uint32).
    pub weight: Array,
    /// Per-group scales.
    pub scales: Array,
    /// Per-group biases.
    pub biases: Array,
    /// Settings used.
    pub spec: QuantSpec,
    /// Multiply through the engine's int8 CPU kernels where they apply (x
    /// rounded to int8 per block of 32: faster, slightly approximate); set
    /// by [`Quantized::for_cpu_kernels`]. Otherwise MLX's exact kernels.
    pub int8_kernels: bool,
}

/// Quantizes `w` along its last axis.
pub fn quantize(w: &Array, spec: QuantSpec) -> Result<Quantized> {
    let spec = spec.validate()?;
    let mut parts = unlist(
        ffi::quantize(&w.inner, spec.group_size, spec.bits).op("quantize")?,
        "quantize",
    )?;
    if parts.len() < 3 {
        return Err(Error::Invalid(
            "quantize returned no biases; only affine mode is supported".into(),
        ));
    }
    let biases = parts.remove(2);
    let scales = parts.remove(1);
    let weight = parts.remove(0);
    Ok(Quantized {
        weight,
        scales,
        biases,
        spec,
        int8_kernels: false,
    })
}

/// [`quantize`] with the settings checked first, so a group size that does not
/// divide the rows gets an error naming the weight `name`, its width and the
/// group sizes that would work.
pub fn quantize_checked(w: &Array, spec: QuantSpec, name: &str) -> Result<Quantized> {
    let spec = spec.validate()?;
    let cols = w.dim(-1);
    if !cols.is_multiple_of(spec.group_size as usize) {
        let fits: Vec<String> = [32, 64, 128]
            .iter()
            .filter(|g| cols.is_multiple_of(**g))
            .map(|g| g.to_string())
            .collect();
        return Err(Error::Invalid(format!(
            "cannot quantize `{name}`: its rows have {cols} elements, not a multiple of the group size {}; {}",
            spec.group_size,
            if fits.is_empty() {
                "no MLX group size (32, 64, 128) divides it".to_string()
            } else {
                format!("use a group size of {}", fits.join(" or "))
            }
        )));
    }
    quantize(w, spec)
}

/// Rebuilds the floating-point matrix.
pub fn dequantize(q: &Quantized) -> Result<Array> {
    wrap(
        ffi::dequantize(
            &q.weight.inner,
            &q.scales.inner,
            &opt_list(Some(&q.biases)),
            q.spec.group_size,
            q.spec.bits,
        ),
        "dequantize",
    )
}

/// `x @ dequantize(q)ᵀ` (when `transpose`) without materialising the matrix.
pub fn quantized_matmul(x: &Array, q: &Quantized, transpose: bool) -> Result<Array> {
    wrap(
        ffi::quantized_matmul(
            &x.inner,
            &q.weight.inner,
            &q.scales.inner,
            &opt_list(Some(&q.biases)),
            transpose,
            q.spec.group_size,
            q.spec.bits,
            q.int8_kernels,
        ),
        "quantized_matmul",
    )
}

/// Turns the engine's own CUDA kernel for [`quantized_matmul`] on or off for
/// this process (on by default; `MLXENGINE_CUDA_QMV=0` starts it off). It
/// serves 4- and 8-bit layers of at least 8 Mi weights (4 Mi for several
/// rows) on the GPU for up to 7 rows of `x` (decode batches;
/// `MLXENGINE_CUDA_QMV_MAX_ROWS` moves the limit), MLX's kernels everything
/// else. Returns whether this build has it (the `cuda` feature).
pub fn set_cuda_kernels(on: bool) -> bool {
    ffi::cuda_qmv_set_enabled(on)
}

/// `x @ dequantize(q)ᵀ` through the engine's CUDA kernel alone, for any
/// number of rows and any size (parity checks against MLX's kernels). Fails
/// without the `cuda` feature, off the GPU, or for other bits than 4 and 8.
pub fn cuda_quantized_matmul(x: &Array, q: &Quantized) -> Result<Array> {
    wrap(
        ffi::cuda_qmv(
            &x.inner,
            &q.weight.inner,
            &q.scales.inner,
            &q.biases.inner,
            q.spec.group_size,
            q.spec.bits,
        ),
        "cuda_quantized_matmul",
    )
}

/// A matrix (N, K) for [`fused_matvec`].
#[derive(Debug, Clone, Copy)]
pub enum FusedWeight<'a> {
    /// MLX affine quantized.
    Quantized(&'a Quantized),
    /// Dense, in `x`'s dtype.
    Dense(&'a Array),
}

/// What follows the products in [`fused_matvec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FusedEpilogue {
    /// One output per matrix, `(…, N_i)` (e.g. q, k and v from one pass over x).
    Split,
    /// Two matrices of one shape (gate, up): one output `silu(gate) · up`.
    SwiGlu,
}

/// A decode step's matrix products in one kernel: `y_i = norm(x) ·
/// dequantize(q_i)ᵀ (+ bias_i) (+ residual)` for one to three matrices, all
/// dense in `x`'s dtype or all quantized (with one bits and group size on the
/// GPU; each its own on the CPU, as GGUF Q4_K_M files mix them), with
/// `norm` = (RMS-norm weight (K,), eps) applied to `x` first and `residual`
/// (…, N) added to a single matrix's product. Each fused kernel replaces 2–5
/// of MLX's ops, and the per-op cost on the host bounds decode on a fast GPU
/// and weighs on a CPU's (it runs beside the kernels on the same cores).
///
/// Where it runs (`None` elsewhere, and the caller composes MLX's ops): on
/// the GPU with the `cuda` feature and our kernels on, for 4/8-bit or dense
/// weights and at most 7 rows of `x` (float32 sums, one rounding to `x`'s
/// dtype); on the CPU for quantized weights opted in to the int8 CPU kernels
/// (see [`Quantized::for_cpu_kernels`]; 4, 5 or 8 bits, float32 `x`) and any
/// number of rows, each row one fixed sequence of operations, so a row gets
/// the same bits alone, batched or in a prompt chunk of any length.
///
/// `x` is `(…, K)` or any row-contiguous shape of `M·K` elements (a decode
/// step's attention output `(B, heads, 1, head_dim)`). The outputs are `(…,
/// N_i)` like `x` (`(M, N_i)` for another shape), or `out_shapes` when not
/// empty: one per output, holding the same elements (q, k and v of a decode
/// step as `(B, heads, 1, head_dim)`, which needs no transpose).
pub fn fused_matvec(
    x: &Array,
    mats: &[(FusedWeight<'_>, Option<&Array>)],
    norm: Option<(&Array, f32)>,
    residual: Option<&Array>,
    epilogue: FusedEpilogue,
    out_shapes: &[&[i32]],
) -> Result<Option<Vec<Array>>> {
    let int8_kernels = mats
        .iter()
        .all(|(w, _)| matches!(w, FusedWeight::Quantized(q) if q.int8_kernels));
    if !cfg!(feature = "cuda") && !int8_kernels {
        return Ok(None);
    }
    // All dense (bits 0 for the shim) or all quantized: alike for the GPU,
    // each in its own format for the int8 CPU kernels.
    let spec = match mats.first() {
        Some((FusedWeight::Quantized(q), _)) => Some(q.spec),
        Some((FusedWeight::Dense(_), _)) => None,
        None => return Ok(None),
    };
    let mut parts = Vec::new();
    let (mut group_sizes, mut bits) = (Vec::new(), Vec::new());
    for (w, _) in mats {
        match (w, spec) {
            (FusedWeight::Quantized(q), Some(s)) if q.spec == s || int8_kernels => {
                parts.extend([&q.weight, &q.scales, &q.biases]);
                group_sizes.push(q.spec.group_size);
                bits.push(q.spec.bits);
            }
            (FusedWeight::Dense(d), None) => {
                parts.push(*d);
                group_sizes.push(0);
                bits.push(0);
            }
            _ => return Ok(None),
        }
    }
    let parts = list(parts);
    let biases = list(mats.iter().filter_map(|(_, b)| *b));
    let has_bias: Vec<bool> = mats.iter().map(|(_, b)| b.is_some()).collect();
    let out = unlist(
        ffi::fused_qmv(
            &x.inner,
            &parts,
            &biases,
            &has_bias,
            &group_sizes,
            &bits,
            int8_kernels,
            &opt_list(norm.map(|(w, _)| w)),
            norm.map_or(0.0, |(_, eps)| eps),
            &opt_list(residual),
            epilogue == FusedEpilogue::SwiGlu,
            &out_shapes.concat(),
            &out_shapes.iter().map(|s| s.len()).collect::<Vec<_>>(),
        )
        .op("fused_matvec")?,
        "fused_matvec",
    )?;
    Ok((!out.is_empty()).then_some(out))
}

/// Whether the CPU's own quantized kernels take weights of `spec` (4, 5 or 8
/// bits, groups of 32, 64 or 128): [`quantized_matmul`] uses them on a CPU
/// stream for float32 `x` when the weights opted in (see
/// [`Quantized::for_cpu_kernels`]), and MLX's kernels otherwise.
pub fn cpu_kernel_supports(spec: QuantSpec) -> bool {
    matches!(spec.bits, 4 | 5 | 8) && matches!(spec.group_size, 32 | 64 | 128)
}

/// The instruction set the CPU quantized kernels use: 0 plain C, 1 AVX2,
/// 2 AVX-512 VNNI (picked from the CPU at run time).
pub fn cpu_kernel_level() -> i32 {
    ffi::quantized_kernel_level(-2)
}

/// Caps the CPU quantized kernels' instruction set at `level` (0 plain C,
/// 1 AVX2, 2 AVX-512 VNNI), or restores the automatic choice with `None`;
/// returns the level now in use. For tests and benchmarks that compare paths.
pub fn force_cpu_kernel_level(level: Option<i32>) -> i32 {
    ffi::quantized_kernel_level(level.map_or(-1, |l| l.max(0)))
}

impl Quantized {
    /// The same weights with float32 scales and biases, opted in to the
    /// int8 CPU kernels: the form they read (1/8 more memory at 4 bits,
    /// group 32, than f16).
    pub fn for_cpu_kernels(&self) -> Result<Quantized> {
        let f32 = crate::Dtype::Float32;
        Ok(Quantized {
            weight: self.weight.clone(),
            scales: self.scales.astype(f32)?,
            biases: self.biases.astype(f32)?,
            spec: self.spec,
            int8_kernels: true,
        })
    }
}
