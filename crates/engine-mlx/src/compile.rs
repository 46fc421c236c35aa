//! `compile` for pure functions: MLX traces the Rust closure once per input
//! shape and fuses the graph (element-wise chains become one kernel).

use crate::array::{list, unlist};
use crate::error::{Context, Result};
use crate::{ffi, Array};
use cxx::UniquePtr;

type Func = dyn Fn(&[Array]) -> Result<Vec<Array>>;

/// A compiled function. Calling it runs the traced, fused graph.
pub struct Compiled {
    inner: UniquePtr<ffi::CompiledFn>,
    // Boxed twice so the pointer handed to C++ stays put; freed after `inner`.
    _func: Box<Box<Func>>,
}

/// Compiles `f`, which must be pure: its outputs depend only on its inputs
/// (no captured arrays that change, no I/O). With `shapeless`, one trace
/// serves all input shapes.
pub fn compile(f: impl Fn(&[Array]) -> Result<Vec<Array>> + 'static, shapeless: bool) -> Result<Compiled> {
    let func: Box<Box<Func>> = Box::new(Box::new(f));
    let ctx = &*func as *const Box<Func> as usize;
    let inner = ffi::compile(ctx, shapeless).op("compile")?;
    Ok(Compiled { inner, _func: func })
}

impl Compiled {
    /// Runs the compiled function.
    pub fn call(&self, inputs: &[&Array]) -> Result<Vec<Array>> {
        let out = ffi::call_compiled(&self.inner, &list(inputs.iter().copied())).op("compiled call")?;
        unlist(out, "compiled call")
    }
}

/// Trampoline the C++ side calls while tracing.
pub(crate) fn invoke_rust_fn(
    ctx: usize,
    inputs: &ffi::ArrayList,
) -> std::result::Result<UniquePtr<ffi::ArrayList>, String> {
    // SAFETY: `ctx` is the address of the Box<Func> owned by the `Compiled`
    // whose `call` is on the stack right now.
    let f = unsafe { &*(ctx as *const Box<Func>) };
    let args: Vec<Array> = (0..ffi::list_len(inputs))
        .map(|i| ffi::list_get(inputs, i).map(|inner| Array { inner }))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| e.what().to_string())?;
    let out = f(&args).map_err(|e| e.to_string())?;
    Ok(list(out.iter()))
}
