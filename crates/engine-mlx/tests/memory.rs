//! MLX's process-wide memory counters, default device and streams.
//!
//! One test in its own binary: clearing the buffer cache and asserting it is
//! empty, resetting the peak, and switching the default stream all act on
//! the whole process, so no other test may allocate meanwhile.

use engine_mlx::{Array, Device, Dtype};

#[test]
fn memory_device_and_streams() -> engine_mlx::Result<()> {
    engine_mlx::memory::reset_peak();
    let a = Array::zeros(&[1024, 1024], Dtype::Float32)?;
    a.eval()?;
    assert!(engine_mlx::memory::active() >= 4 << 20);
    assert!(engine_mlx::memory::peak() >= 4 << 20);
    drop(a);
    // Nothing may still be in flight (a GPU frees buffers when work completes).
    let device = engine_mlx::default_device();
    engine_mlx::Stream::default_for(device)?.synchronize()?;
    engine_mlx::memory::clear_cache();
    assert_eq!(engine_mlx::memory::cache(), 0);
    let prev = engine_mlx::memory::set_cache_limit(1 << 20);
    assert_eq!(engine_mlx::memory::set_cache_limit(prev), 1 << 20);
    assert_eq!(engine_mlx::mlx_version(), "0.32.4");

    // MLX picks the GPU whenever it has one; the CPU is always there.
    let expected = if engine_mlx::gpu_available() {
        Device::Gpu
    } else {
        Device::Cpu
    };
    assert_eq!(device, expected);
    assert!(!engine_mlx::device_info(device)?.is_empty());
    assert!(!engine_mlx::device_info(Device::Cpu)?.is_empty());
    let s = engine_mlx::Stream::new(Device::Cpu)?;
    s.set_default()?;
    let one = Array::from_slice(&[1.0f32], &[1])?;
    assert_eq!(one.add(&one)?.to_vec::<f32>()?, [2.0]);
    s.synchronize()?;
    engine_mlx::Stream::default_for(device)?.set_default()?;
    Ok(())
}
