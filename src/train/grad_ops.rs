//! Differentiable forms of the ops whose fused candle kernels have no backward (`rms_norm`,
//! `rope`, `softmax_last_dim`: their gradients would stop silently). Each is written from
//! primitive ops that candle's autograd differentiates; the maxima subtracted for stability are
//! detached (softmax and log-softmax do not depend on them).

use candle_core::{Result, Tensor, D};

/// HF Llama RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)?.broadcast_mul(w)
}

/// Rotary embedding in the rotate-half order (HF layout): `x * cos + rotate_half(x) * sin`.
/// `x`: `[.., t, d]`; `cos`, `sin`: `[t, d]` (each half repeated).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// `[t, head_dim]` cos and sin tables for positions `0..t` (each half repeated).
pub fn rope_tables(inv_freq: &[f32], t: usize) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(t * 2 * half);
    let mut sin = Vec::with_capacity(t * 2 * half);
    for pos in 0..t {
        for _ in 0..2 {
            for &f in inv_freq {
                // f32 angle, as HF computes `position * inv_freq` in f32.
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let dev = candle_core::Device::Cpu;
    Ok((
        Tensor::from_vec(cos, (t, 2 * half), &dev)?,
        Tensor::from_vec(sin, (t, 2 * half), &dev)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// A scalar loop is the forward reference of rms_norm; the gradient of each differentiable
    /// form is checked against central finite differences of its own forward.
    #[test]
    fn forms_match_candle_kernels_and_have_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_vec(
            (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect(),
            (2, 3, 4),
            &dev,
        )
        .unwrap();
        let w = Tensor::new(&[0.5f32, 1.5, -1.0, 2.0], &dev).unwrap();
        let ours = rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
        let fused = scalar_rms_norm(x.as_tensor(), &w, 1e-5);
        assert_close(&ours, &fused, 1e-5);
        let soft = softmax_last_dim(x.as_tensor()).unwrap();
        let sum: Vec<f32> = soft
            .sum(D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(sum.iter().all(|s| (s - 1.0).abs() < 1e-5));
        let logs = log_softmax_last_dim(x.as_tensor()).unwrap().exp().unwrap();
        assert_close(&logs, &soft, 1e-6);
        for f in [
            &(|t: &Tensor| rms_norm(t, &w, 1e-5)) as &dyn Fn(&Tensor) -> Result<Tensor>,
            &|t: &Tensor| softmax_last_dim(t),
            &|t: &Tensor| log_softmax_last_dim(t),
            &|t: &Tensor| {
                let (c, s) = rope_tables(&[1.0, 0.1], 3)?;
                rope(t, &c, &s)
            },
        ] {
            check_gradient(&x, f);
        }
    }

    fn scalar_rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Tensor {
        let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let w: Vec<f32> = w.to_vec1().unwrap();
        let n = w.len();
        let out: Vec<f32> = v
            .chunks(n)
            .flat_map(|row| {
                let ms = row.iter().map(|a| a * a).sum::<f32>() / n as f32;
                let inv = 1.0 / (ms + eps).sqrt();
                row.iter()
                    .zip(&w)
                    .map(move |(a, g)| a * inv * g)
                    .collect::<Vec<_>>()
            })
            .collect();
        Tensor::from_vec(out, x.shape(), x.device()).unwrap()
    }

    fn assert_close(a: &Tensor, b: &Tensor, tol: f32) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < tol, "max diff {d}");
    }

    /// d(sum(f(x) * r))/dx by autograd vs central differences in f64 arithmetic on f32 values.
    fn check_gradient(x: &Var, f: &dyn Fn(&Tensor) -> Result<Tensor>) {
        let dev = Device::Cpu;
        let n = x.elem_count();
        let r = Tensor::from_vec(
            (0..n)
                .map(|i| ((i * 5 % 7) as f32 - 3.0) / 2.0)
                .collect::<Vec<f32>>(),
            x.shape(),
            &dev,
        )
        .unwrap();
        let obj = |t: &Tensor| f(t).unwrap().mul(&r).unwrap().sum_all().unwrap();
        let grads = obj(x.as_tensor()).backward().unwrap();
        let g: Vec<f32> = grads
            .get(x)
            .expect("gradient reaches x")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-2f32;
        for i in 0..n {
            let at = |d: f32| {
                let mut v = base.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, x.shape(), &dev).unwrap();
                obj(&t).to_scalar::<f32>().unwrap() as f64
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            assert!(
                (fd - g[i] as f64).abs() < 2e-2 * (1.0 + fd.abs()),
                "elem {i}: fd {fd} vs autograd {}",
                g[i]
            );
        }
    }
}
