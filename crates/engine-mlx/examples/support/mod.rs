//! What the GPU check examples (`qmv_check`, `attn_check`) share.

/// ‖a − b‖ / ‖b‖ over all elements, in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut d, mut n) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        d += (f64::from(*x) - f64::from(*y)).powi(2);
        n += f64::from(*y).powi(2);
    }
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}
