//! AdamW (decoupled weight decay, bias-corrected moments) over the LoRA `Var`s, with the
//! gradient's global norm clipped before the update. Moments are plain f32 vectors in the order
//! of `LoraParams::named()`, so a checkpoint stores and restores them by name.

use super::tensor_io::{cerr, flat};
use crate::error::{Error, Result};
use candle_core::{Tensor, Var};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Updates done (the bias correction's `t`).
    pub t: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

/// The global L2 norm of all gradients.
pub fn global_norm(grads: &[Vec<f32>]) -> f64 {
    grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

/// Scales `grads` so their global norm is at most `max_norm` (0 = no clipping); returns the
/// norm before clipping.
pub fn clip(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 && norm > max_norm {
        let s = (max_norm / (norm + 1e-6)) as f32;
        grads
            .iter_mut()
            .flat_map(|g| g.iter_mut())
            .for_each(|x| *x *= s);
    }
    norm
}

impl AdamW {
    pub fn new(cfg: AdamWConfig, sizes: &[usize]) -> Self {
        AdamW {
            cfg,
            t: 0,
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: sizes.iter().map(|&n| vec![0.0; n]).collect(),
        }
    }

    /// One update of every parameter with its gradient at learning rate `lr`.
    pub fn step(&mut self, params: &[&Var], grads: &[Vec<f32>], lr: f64) -> Result<()> {
        if params.len() != self.m.len() || grads.len() != self.m.len() {
            return Err(Error::Internal("adamw: parameter count changed".into()));
        }
        self.t += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (i, p) in params.iter().enumerate() {
            let mut w = flat(p.as_tensor())?;
            let (m, v, g) = (&mut self.m[i], &mut self.v[i], &grads[i]);
            for j in 0..w.len() {
                let gj = g[j] as f64;
                let mj = c.beta1 * m[j] as f64 + (1.0 - c.beta1) * gj;
                let vj = c.beta2 * v[j] as f64 + (1.0 - c.beta2) * gj * gj;
                m[j] = mj as f32;
                v[j] = vj as f32;
                let update =
                    (mj / bc1) / ((vj / bc2).sqrt() + c.eps) + c.weight_decay * w[j] as f64;
                w[j] = (w[j] as f64 - lr * update) as f32;
            }
            let t = Tensor::from_vec(w, p.shape(), p.device())
                .and_then(|t| t.to_dtype(p.dtype()))
                .map_err(cerr)?;
            p.set(&t).map_err(cerr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One step by hand: with m = v = 0, the first bias-corrected update is lr * sign(g)
    /// (up to eps), plus the decoupled decay.
    #[test]
    fn first_step_is_sign_of_gradient_plus_decay() {
        let p = Var::from_vec(vec![1.0f32, -2.0, 0.5], 3, &Device::Cpu).unwrap();
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut opt = AdamW::new(cfg, &[3]);
        opt.step(&[&p], &[vec![0.3, -4.0, 0.0]], 0.01).unwrap();
        let got: Vec<f32> = p.as_tensor().to_vec1().unwrap();
        let want = [
            1.0 - 0.01 * (1.0 + 0.1),
            -2.0 - 0.01 * (-1.0 + 0.1 * -2.0),
            0.5 - 0.01 * 0.1 * 0.5,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g = vec![vec![3.0f32], vec![4.0]];
        assert!((clip(&mut g, 1.0) - 5.0).abs() < 1e-9);
        assert!((global_norm(&g) - 1.0).abs() < 1e-5);
        let mut small = vec![vec![0.3f32]];
        clip(&mut small, 1.0);
        assert_eq!(small[0][0], 0.3);
    }
}
