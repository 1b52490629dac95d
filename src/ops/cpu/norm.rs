//! RMSNorm, per row: `y = x / sqrt(mean(x²) + eps) * w`, accumulated in f32 like HF Llama.

use rayon::prelude::*;

pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let d = w.len();
    debug_assert_eq!(x.len(), y.len());
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(yr, xr)| {
            let ss = super::dot(xr, xr) / d as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            for ((o, &v), &g) in yr.iter_mut().zip(xr).zip(w) {
                *o = g * (v * inv);
            }
        });
}

#[cfg(test)]
mod tests {
    #[test]
    fn rms_norm_unit_rows() {
        let x = vec![3.0f32, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let w = vec![1.0f32, 2.0, 1.0, 1.0];
        let mut y = vec![0f32; 8];
        super::rms_norm(&x, &w, 0.0, &mut y);
        let r = (25.0f32 / 4.0).sqrt();
        assert!((y[0] - 3.0 / r).abs() < 1e-6 && (y[1] - 8.0 / r).abs() < 1e-6);
        assert!((y[4] - 1.0).abs() < 1e-6 && (y[5] - 2.0).abs() < 1e-6);
    }
}
