//! LoRA dropout (PEFT's `lora_dropout` on the input of `A`): inverted dropout with masks drawn
//! from a seeded generator on the host (then moved to `x`'s device), so a run's masks are a
//! function of its seed and step alone, whatever the device.

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Dropout {
    p: f32,
    rng: StdRng,
}

impl Dropout {
    /// `p` in `[0, 1)`; the masks of one step come from `seed`.
    pub fn new(p: f32, seed: u64) -> Self {
        Dropout {
            p,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// `x * mask / (1 - p)` with each mask element 0 with probability `p`.
    pub fn apply(&mut self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if self.rng.random::<f32>() < self.p {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
    }
}
