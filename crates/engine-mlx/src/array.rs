//! [`Array`]: an owned handle to an `mlx::core::array`, and the ops on it.
//!
//! MLX is lazy: ops build a graph and nothing is computed until [`eval`] or a
//! read (`to_vec`, `item`). Every op that MLX may reject (shapes, dtypes)
//! returns [`Result`], carrying MLX's own message.

use crate::error::{Context, Error, Result};
use crate::ffi;
use crate::{Dtype, Element};
use cxx::UniquePtr;
use std::fmt;

/// An n-dimensional MLX array. Cloning is cheap (MLX arrays share buffers).
pub struct Array {
    pub(crate) inner: UniquePtr<ffi::Array>,
}

// SAFETY: an mlx::core::array is a reference-counted handle; moving it to
// another thread is sound. It is not `Sync`: MLX graph nodes are mutated on
// evaluation, so concurrent use from two threads must be serialised by the caller.
unsafe impl Send for Array {}

impl Clone for Array {
    fn clone(&self) -> Self {
        Array {
            inner: ffi::clone_array(&self.inner),
        }
    }
}

impl fmt::Debug for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Array(shape={:?}, dtype={})", self.shape(), self.dtype())
    }
}

/// Element-wise operations of one argument.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Unary {
    Negative = 0,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Square,
    Sin,
    Cos,
    Tanh,
    Sigmoid,
    Erf,
    Log1p,
    Floor,
    Ceil,
    LogicalNot,
    Reciprocal,
    Sign,
    StopGradient,
    Round,
}

/// Element-wise operations of two arguments (with broadcasting).
#[derive(Clone, Copy)]
#[repr(u8)]
enum Binary {
    Add = 0,
    Subtract,
    Multiply,
    Divide,
    Power,
    Maximum,
    Minimum,
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
    LogicalAnd,
    LogicalOr,
    Remainder,
    FloorDivide,
}

#[derive(Clone, Copy)]
#[repr(u8)]
enum Reduce {
    Sum = 0,
    Mean,
    Max,
    Min,
    Prod,
    All,
    Any,
    Var,
}

pub(crate) fn wrap(r: std::result::Result<UniquePtr<ffi::Array>, cxx::Exception>, op: &'static str) -> Result<Array> {
    r.op(op).map(|inner| Array { inner })
}

/// Builds the shim's array list from borrowed arrays.
pub(crate) fn list<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> UniquePtr<ffi::ArrayList> {
    let mut l = ffi::list_new();
    for a in arrays {
        ffi::list_push(l.pin_mut(), &a.inner);
    }
    l
}

/// An optional argument: an empty list means "none".
pub(crate) fn opt_list(a: Option<&Array>) -> UniquePtr<ffi::ArrayList> {
    list(a)
}

pub(crate) fn unlist(l: UniquePtr<ffi::ArrayList>, op: &'static str) -> Result<Vec<Array>> {
    (0..ffi::list_len(&l)).map(|i| wrap(ffi::list_get(&l, i), op)).collect()
}

pub(crate) fn dims(shape: &[usize]) -> Result<Vec<i32>> {
    shape
        .iter()
        .map(|&d| {
            i32::try_from(d)
                .map_err(|_| Error::Invalid(format!("dimension {d} is too large for MLX (max {})", i32::MAX)))
        })
        .collect()
}

macro_rules! unary_methods {
    ($($(#[$m:meta])* $name:ident => $op:ident),* $(,)?) => {$(
        $(#[$m])*
        pub fn $name(&self) -> Result<Array> {
            wrap(ffi::unary(&self.inner, Unary::$op as u8), stringify!($name))
        }
    )*};
}

macro_rules! binary_methods {
    ($($(#[$m:meta])* $name:ident => $op:ident),* $(,)?) => {$(
        $(#[$m])*
        pub fn $name(&self, other: &Array) -> Result<Array> {
            wrap(ffi::binary(&self.inner, &other.inner, Binary::$op as u8), stringify!($name))
        }
    )*};
}

macro_rules! reduce_methods {
    ($($(#[$m:meta])* $name:ident => $op:ident),* $(,)?) => {$(
        $(#[$m])*
        pub fn $name(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
            wrap(ffi::reduce(&self.inner, axes, keepdims, Reduce::$op as u8), stringify!($name))
        }
    )*};
}

impl Array {
    // ---- creation

    /// Copies a Rust slice into a new array of the given shape.
    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Array> {
        Self::from_bytes(bytemuck::cast_slice(data), shape, T::DTYPE)
    }

    /// Copies raw little-endian bytes of `dtype` elements into a new array.
    pub fn from_bytes(data: &[u8], shape: &[usize], dtype: Dtype) -> Result<Array> {
        wrap(ffi::from_bytes(data, &dims(shape)?, dtype as u8), "from_bytes")
    }

    /// A new array whose elements `fill` writes in place (row-major), so a
    /// large tensor decoded on the Rust side needs no second copy.
    pub fn from_fill<T: Element>(shape: &[usize], fill: impl FnOnce(&mut [T])) -> Result<Array> {
        let a = wrap(ffi::alloc_uninit(&dims(shape)?, T::DTYPE as u8), "alloc")?;
        let n: usize = shape.iter().product();
        if n > 0 {
            // SAFETY: the buffer was just allocated for `n` elements of `T` and no
            // other array or graph node refers to it yet. It is zeroed before the
            // slice exists, so `fill` never reads uninitialised memory.
            let data = unsafe {
                let p = ffi::array_data_mut(&a.inner) as *mut T;
                std::ptr::write_bytes(p, 0, n);
                std::slice::from_raw_parts_mut(p, n)
            };
            fill(data);
        }
        Ok(a)
    }

    /// A 0-dimensional array holding `value` as `dtype`.
    pub fn scalar(value: f64, dtype: Dtype) -> Result<Array> {
        Self::full(&[], value, dtype)
    }

    /// An array of `shape` filled with `value`.
    pub fn full(shape: &[usize], value: f64, dtype: Dtype) -> Result<Array> {
        wrap(ffi::full(&dims(shape)?, value, dtype as u8), "full")
    }

    /// An array of zeros.
    pub fn zeros(shape: &[usize], dtype: Dtype) -> Result<Array> {
        Self::full(shape, 0.0, dtype)
    }

    /// An array of ones.
    pub fn ones(shape: &[usize], dtype: Dtype) -> Result<Array> {
        Self::full(shape, 1.0, dtype)
    }

    /// Evenly spaced values in `[start, stop)`.
    pub fn arange(start: f64, stop: f64, step: f64, dtype: Dtype) -> Result<Array> {
        wrap(ffi::arange(start, stop, step, dtype as u8), "arange")
    }

    // ---- inspection

    /// The dimensions.
    pub fn shape(&self) -> Vec<usize> {
        ffi::shape(&self.inner).into_iter().map(|d| d as usize).collect()
    }

    /// The dimensions as MLX stores them (`i32`).
    pub fn shape_i32(&self) -> Vec<i32> {
        ffi::shape(&self.inner)
    }

    /// Size of dimension `axis` (negative counts from the end).
    pub fn dim(&self, axis: i32) -> usize {
        let s = self.shape();
        let i = if axis < 0 { s.len() as i32 + axis } else { axis };
        s.get(i as usize).copied().unwrap_or(0)
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    /// The element type.
    pub fn dtype(&self) -> Dtype {
        Dtype::from_code(ffi::dtype(&self.inner))
    }

    /// Number of elements.
    pub fn size(&self) -> usize {
        ffi::size(&self.inner)
    }

    /// Size of the data in bytes.
    pub fn nbytes(&self) -> usize {
        ffi::nbytes(&self.inner)
    }

    // ---- reading back

    /// Evaluates this array.
    pub fn eval(&self) -> Result<()> {
        eval([self])
    }

    /// Evaluates and copies the elements out, row-major. `T` must match the dtype.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if self.dtype() != T::DTYPE {
            return Err(Error::Invalid(format!(
                "to_vec::<{}> on a {} array; call astype({}) first",
                T::DTYPE,
                self.dtype(),
                T::DTYPE
            )));
        }
        let mut out = vec![<T as bytemuck::Zeroable>::zeroed(); self.size()];
        ffi::copy_bytes(&self.inner, bytemuck::cast_slice_mut(&mut out)).op("to_vec")?;
        Ok(out)
    }

    /// Evaluates and returns the raw bytes, row-major.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.nbytes()];
        ffi::copy_bytes(&self.inner, &mut out).op("to_bytes")?;
        Ok(out)
    }

    /// Converts to f32 and copies the elements out.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        self.astype(Dtype::Float32)?.to_vec()
    }

    /// The single element as `f64`.
    pub fn item_f64(&self) -> Result<f64> {
        ffi::item_f64(&self.inner).op("item")
    }

    /// The single element as `i64`.
    pub fn item_i64(&self) -> Result<i64> {
        ffi::item_i64(&self.inner).op("item")
    }

    /// Converts the element type.
    pub fn astype(&self, dtype: Dtype) -> Result<Array> {
        wrap(ffi::astype(&self.inner, dtype as u8), "astype")
    }

    // ---- element-wise
    unary_methods! {
        /// `-x`.
        negative => Negative,
        /// `|x|`.
        abs => Abs,
        /// `e^x`.
        exp => Exp,
        /// Natural logarithm.
        log => Log,
        /// Square root.
        sqrt => Sqrt,
        /// `1/sqrt(x)`.
        rsqrt => Rsqrt,
        /// `x²`.
        square => Square,
        /// Sine.
        sin => Sin,
        /// Cosine.
        cos => Cos,
        /// Hyperbolic tangent.
        tanh => Tanh,
        /// Logistic sigmoid.
        sigmoid => Sigmoid,
        /// Gauss error function.
        erf => Erf,
        /// `ln(1+x)`.
        log1p => Log1p,
        /// Round down.
        floor => Floor,
        /// Round up.
        ceil => Ceil,
        /// Logical not.
        logical_not => LogicalNot,
        /// `1/x`.
        reciprocal => Reciprocal,
        /// Sign (-1, 0, 1).
        sign => Sign,
        /// Identity that blocks gradients.
        stop_gradient => StopGradient,
        /// Round to nearest.
        round => Round,
    }

    binary_methods! {
        /// `a + b`.
        add => Add,
        /// `a - b`.
        subtract => Subtract,
        /// `a * b`.
        multiply => Multiply,
        /// `a / b`.
        divide => Divide,
        /// `a ^ b`.
        power => Power,
        /// Element-wise maximum.
        maximum => Maximum,
        /// Element-wise minimum.
        minimum => Minimum,
        /// `a == b`.
        equal => Equal,
        /// `a != b`.
        not_equal => NotEqual,
        /// `a < b`.
        less => Less,
        /// `a <= b`.
        less_equal => LessEqual,
        /// `a > b`.
        greater => Greater,
        /// `a >= b`.
        greater_equal => GreaterEqual,
        /// Logical and.
        logical_and => LogicalAnd,
        /// Logical or.
        logical_or => LogicalOr,
        /// Remainder of division.
        remainder => Remainder,
        /// Floor division.
        floor_divide => FloorDivide,
    }

    /// `self + s` for a scalar, in `self`'s dtype.
    pub fn add_scalar(&self, s: f64) -> Result<Array> {
        self.add(&Array::scalar(s, self.dtype())?)
    }

    /// `self * s` for a scalar, in `self`'s dtype.
    pub fn mul_scalar(&self, s: f64) -> Result<Array> {
        self.multiply(&Array::scalar(s, self.dtype())?)
    }

    /// Clamps to `[lo, hi]`.
    pub fn clip(&self, lo: f64, hi: f64) -> Result<Array> {
        wrap(ffi::clip(&self.inner, lo, hi), "clip")
    }

    // ---- activations

    /// SiLU (swish): `x * sigmoid(x)`; a vectorised kernel for float32 on the CPU.
    pub fn silu(&self) -> Result<Array> {
        wrap(ffi::silu(&self.inner), "silu")
    }

    /// Exact GELU: `0.5 x (1 + erf(x / √2))`; a vectorised kernel for float32 on the CPU.
    pub fn gelu(&self) -> Result<Array> {
        wrap(ffi::gelu(&self.inner), "gelu")
    }

    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    pub fn gelu_approx(&self) -> Result<Array> {
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let x3 = self.multiply(&self.square()?)?.mul_scalar(0.044715)?;
        let t = self.add(&x3)?.mul_scalar(c)?.tanh()?.add_scalar(1.0)?;
        self.multiply(&t)?.mul_scalar(0.5)
    }

    /// ReLU: `max(x, 0)`.
    pub fn relu(&self) -> Result<Array> {
        self.maximum(&Array::scalar(0.0, self.dtype())?)
    }

    // ---- linear algebra

    /// Matrix product with broadcasting over leading dimensions.
    pub fn matmul(&self, other: &Array) -> Result<Array> {
        wrap(ffi::matmul(&self.inner, &other.inner), "matmul")
    }

    /// `beta * self + alpha * (a @ b)`.
    pub fn addmm(&self, a: &Array, b: &Array, alpha: f32, beta: f32) -> Result<Array> {
        wrap(ffi::addmm(&self.inner, &a.inner, &b.inner, alpha, beta), "addmm")
    }

    // ---- shapes

    /// Reshapes (one dimension may be -1).
    pub fn reshape(&self, shape: &[i32]) -> Result<Array> {
        wrap(ffi::reshape(&self.inner, shape), "reshape")
    }

    /// Permutes axes; an empty `axes` reverses them.
    pub fn transpose(&self, axes: &[i32]) -> Result<Array> {
        wrap(ffi::transpose(&self.inner, axes), "transpose")
    }

    /// Transposes the last two axes (`x.T` for a matrix).
    pub fn t(&self) -> Result<Array> {
        self.swapaxes(-1, -2)
    }

    /// Swaps two axes.
    pub fn swapaxes(&self, a: i32, b: i32) -> Result<Array> {
        wrap(ffi::swapaxes(&self.inner, a, b), "swapaxes")
    }

    /// Inserts an axis of size 1.
    pub fn expand_dims(&self, axis: i32) -> Result<Array> {
        wrap(ffi::expand_dims(&self.inner, axis), "expand_dims")
    }

    /// Removes an axis of size 1.
    pub fn squeeze(&self, axis: i32) -> Result<Array> {
        wrap(ffi::squeeze(&self.inner, axis), "squeeze")
    }

    /// Splits into `n` equal parts along `axis`.
    pub fn split(&self, n: i32, axis: i32) -> Result<Vec<Array>> {
        unlist(ffi::split_sections(&self.inner, n, axis).op("split")?, "split")
    }

    /// Splits at the given indices along `axis`.
    pub fn split_at(&self, indices: &[i32], axis: i32) -> Result<Vec<Array>> {
        unlist(ffi::split_at(&self.inner, indices, axis).op("split")?, "split")
    }

    /// Strided slice `[start:stop:strides]` over all axes.
    pub fn slice(&self, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<Array> {
        wrap(ffi::slice(&self.inner, start, stop, strides), "slice")
    }

    /// Slice `[start:stop]` of one axis, keeping the others whole.
    pub fn slice_axis(&self, axis: i32, start: i32, stop: i32) -> Result<Array> {
        let shape = self.shape_i32();
        let n = shape.len() as i32;
        let ax = if axis < 0 { n + axis } else { axis };
        if ax < 0 || ax >= n {
            return Err(Error::Invalid(format!("axis {axis} out of range for {n} dimensions")));
        }
        let mut lo = vec![0; shape.len()];
        let mut hi = shape.clone();
        lo[ax as usize] = start;
        hi[ax as usize] = stop;
        self.slice(&lo, &hi, &vec![1; shape.len()])
    }

    /// Returns `self` with `update` written into `[start:stop:strides]`.
    pub fn slice_update(&self, update: &Array, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<Array> {
        wrap(
            ffi::slice_update(&self.inner, &update.inner, start, stop, strides),
            "slice_update",
        )
    }

    /// Gathers entries of `indices` along `axis`.
    pub fn take(&self, indices: &Array, axis: i32) -> Result<Array> {
        wrap(ffi::take(&self.inner, &indices.inner, axis), "take")
    }

    /// Gathers along `axis` with indices of the same rank.
    pub fn take_along_axis(&self, indices: &Array, axis: i32) -> Result<Array> {
        wrap(
            ffi::take_along_axis(&self.inner, &indices.inner, axis),
            "take_along_axis",
        )
    }

    /// Scatters `values` at `indices` along `axis`.
    pub fn put_along_axis(&self, indices: &Array, values: &Array, axis: i32) -> Result<Array> {
        wrap(
            ffi::put_along_axis(&self.inner, &indices.inner, &values.inner, axis),
            "put_along_axis",
        )
    }

    /// Constant padding of `axes` by `low` before and `high` after.
    pub fn pad(&self, axes: &[i32], low: &[i32], high: &[i32], value: f64) -> Result<Array> {
        wrap(ffi::pad(&self.inner, axes, low, high, value), "pad")
    }

    /// Repeats each element `repeats` times along `axis`.
    pub fn repeat(&self, repeats: i32, axis: i32) -> Result<Array> {
        wrap(ffi::repeat(&self.inner, repeats, axis), "repeat")
    }

    /// Tiles the whole array.
    pub fn tile(&self, reps: &[i32]) -> Result<Array> {
        wrap(ffi::tile(&self.inner, reps), "tile")
    }

    /// Broadcasts to a shape.
    pub fn broadcast_to(&self, shape: &[i32]) -> Result<Array> {
        wrap(ffi::broadcast_to(&self.inner, shape), "broadcast_to")
    }

    /// Evaluates this array and copies it into a buffer of its own. MLX's
    /// slices are views that keep their whole input buffer alive: a rank's
    /// share of a weight detached this way lets the rest be freed.
    pub fn detached(&self) -> Result<Array> {
        wrap(ffi::detached(&self.inner), "detached")
    }

    /// A row-contiguous copy (no-op when already contiguous).
    pub fn contiguous(&self) -> Result<Array> {
        wrap(ffi::contiguous(&self.inner), "contiguous")
    }

    // ---- reductions
    reduce_methods! {
        /// Sum over `axes` (all when empty).
        sum => Sum,
        /// Mean over `axes` (all when empty).
        mean => Mean,
        /// Maximum over `axes` (all when empty).
        max => Max,
        /// Minimum over `axes` (all when empty).
        min => Min,
        /// Product over `axes` (all when empty).
        prod => Prod,
        /// Logical and over `axes` (all when empty).
        all => All,
        /// Logical or over `axes` (all when empty).
        any => Any,
        /// Variance over `axes` (all when empty).
        var => Var,
    }

    /// Softmax over `axes`; `precise` accumulates in f32 for half inputs.
    pub fn softmax(&self, axes: &[i32], precise: bool) -> Result<Array> {
        wrap(ffi::softmax(&self.inner, axes, precise), "softmax")
    }

    /// `log(sum(exp(x)))` over `axes`, computed stably.
    pub fn logsumexp(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
        wrap(ffi::logsumexp(&self.inner, axes, keepdims), "logsumexp")
    }

    /// Index of the maximum along `axis`.
    pub fn argmax(&self, axis: i32, keepdims: bool) -> Result<Array> {
        wrap(ffi::argmax(&self.inner, axis, keepdims), "argmax")
    }

    /// Index of the minimum along `axis`.
    pub fn argmin(&self, axis: i32, keepdims: bool) -> Result<Array> {
        wrap(ffi::argmin(&self.inner, axis, keepdims), "argmin")
    }

    /// Sorted copy along `axis`.
    pub fn sort(&self, axis: i32) -> Result<Array> {
        wrap(ffi::sort(&self.inner, axis), "sort")
    }

    /// Indices that sort along `axis` (stable).
    pub fn argsort(&self, axis: i32) -> Result<Array> {
        wrap(ffi::argsort(&self.inner, axis), "argsort")
    }

    /// Indices that put the `kth` smallest element in place along `axis`.
    pub fn argpartition(&self, kth: i32, axis: i32) -> Result<Array> {
        wrap(ffi::argpartition(&self.inner, kth, axis), "argpartition")
    }

    /// Cumulative sum along `axis`.
    pub fn cumsum(&self, axis: i32, reverse: bool, inclusive: bool) -> Result<Array> {
        wrap(ffi::cumsum(&self.inner, axis, reverse, inclusive), "cumsum")
    }
}

/// Evaluates several arrays together (one graph walk).
pub fn eval<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> Result<()> {
    ffi::eval(&list(arrays)).op("eval")
}

/// Schedules evaluation and returns at once; reading an array waits for it.
pub fn async_eval<'a>(arrays: impl IntoIterator<Item = &'a Array>) -> Result<()> {
    ffi::async_eval(&list(arrays)).op("async_eval")
}

/// Joins arrays along an existing axis.
pub fn concatenate(arrays: &[&Array], axis: i32) -> Result<Array> {
    wrap(ffi::concatenate(&list(arrays.iter().copied()), axis), "concatenate")
}

/// Stacks arrays along a new axis.
pub fn stack(arrays: &[&Array], axis: i32) -> Result<Array> {
    wrap(ffi::stack(&list(arrays.iter().copied()), axis), "stack")
}

/// Element-wise `cond ? x : y`.
pub fn where_(cond: &Array, x: &Array, y: &Array) -> Result<Array> {
    wrap(ffi::where_(&cond.inner, &x.inner, &y.inner), "where")
}

/// 1-D convolution; input NLC, weight (C_out, K, C_in / groups).
pub fn conv1d(x: &Array, w: &Array, stride: i32, padding: i32, dilation: i32, groups: i32) -> Result<Array> {
    wrap(
        ffi::conv1d(&x.inner, &w.inner, stride, padding, dilation, groups),
        "conv1d",
    )
}

/// 2-D convolution; input NHWC, weight (C_out, KH, KW, C_in / groups).
pub fn conv2d(
    x: &Array,
    w: &Array,
    stride: (i32, i32),
    padding: (i32, i32),
    dilation: (i32, i32),
    groups: i32,
) -> Result<Array> {
    wrap(
        ffi::conv2d(
            &x.inner, &w.inner, stride.0, stride.1, padding.0, padding.1, dilation.0, dilation.1, groups,
        ),
        "conv2d",
    )
}

/// Nearest-neighbour upsampling of an NHWC image by integer factors.
pub fn upsample_nearest(x: &Array, scale_h: i32, scale_w: i32) -> Result<Array> {
    // One broadcast copy, (N, H, sh, W, sw, C) → (N, sh·H, sw·W, C): two
    // `repeat`s copied the image twice (on the CPU MLX's generic strided copy,
    // a third of the diffusion VAE's copies).
    let s = x.shape_i32();
    if s.len() != 4 {
        return x.repeat(scale_h, 1)?.repeat(scale_w, 2);
    }
    x.reshape(&[s[0], s[1], 1, s[2], 1, s[3]])?
        .broadcast_to(&[s[0], s[1], scale_h, s[2], scale_w, s[3]])?
        .reshape(&[s[0], s[1] * scale_h, s[2] * scale_w, s[3]])
}
