//! AdamW over the flat buffer, global-norm clipping and learning-rate schedules.
//!
//! The optimizer walks a rank's shard as segments (each tensor's piece, and padding) once per
//! step: each gets one fused AdamW update (decoupled weight decay for every role but
//! [`crate::Role::Vector`]), with the clip coefficient folded into the gradient scale so
//! clipping costs no extra pass.

pub mod matrix;

use crate::config::Optimizer;
use crate::model::{download_f64, w};
use crate::Result;
use weft_kernels::{AdamW, Backend, DType, Mix, Ops, Slice};

/// Learning rate at 0-based `step` of `steps`: linear warmup over `warmup_steps`, then
/// `cosine` decay to `min_lr_ratio·lr`, `wsd` (stable, then linear decay over the last
/// `decay_fraction` of steps), or `constant`.
pub fn lr_at(o: &Optimizer, steps: u64, step: u64) -> f64 {
    let (lr, min) = (o.lr, o.lr * o.min_lr_ratio);
    if step < o.warmup_steps {
        return lr * (step + 1) as f64 / o.warmup_steps as f64;
    }
    let after = (steps - o.warmup_steps).max(1) as f64;
    let frac = ((step - o.warmup_steps) as f64 / after).clamp(0.0, 1.0);
    match o.schedule.as_str() {
        "cosine" => min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * frac).cos()),
        "wsd" => {
            let decay_start = 1.0 - o.decay_fraction;
            if frac < decay_start || o.decay_fraction == 0.0 {
                lr
            } else {
                lr - (lr - min) * (frac - decay_start) / o.decay_fraction
            }
        }
        _ => lr,
    }
}

/// AdamW moments (same layout as the parameters) and the step count; with AdEMAMix also the
/// slow EMA `m2` and the length of its warm-up.
pub struct AdamWState<B: Backend> {
    pub m: B::Buffer,
    pub v: B::Buffer,
    pub m2: Option<B::Buffer>,
    /// Steps taken so far.
    pub step: u32,
    mix_steps: u64,
    acc: B::Buffer,
    /// Muon or Scion (`m` is their momentum; `v` serves the AdamW entries).
    matrix: Option<matrix::MatrixOpt<B>>,
}

/// AdEMAMix's `α` and `β3` at 1-based step `t` of a warm-up over `total` steps: `α` grows
/// linearly from 0, `β3` from `β1` such that the EMA's half-life grows linearly (the paper's
/// schedulers).
pub fn mix_at(o: &Optimizer, t: u64, total: u64) -> Mix {
    let f = (t as f64 / total.max(1) as f64).min(1.0);
    let (l1, l3) = (o.beta1.ln(), o.beta3.ln());
    let beta3 = ((l1 * l3) / ((1.0 - f) * l3 + f * l1)).exp().min(o.beta3);
    Mix {
        beta3,
        alpha: f * o.alpha,
    }
}

impl<B: Ops> AdamWState<B> {
    pub fn new(be: &B, dtype: DType, n: usize) -> Result<Self> {
        Ok(AdamWState {
            m: crate::alloc::alloc(be, "the optimizer's first moment", dtype, n)?,
            v: crate::alloc::alloc(be, "the optimizer's second moment", dtype, n)?,
            m2: None,
            step: 0,
            mix_steps: 0,
            acc: be.alloc(dtype, 1)?,
            matrix: None,
        })
    }

    /// The state `cfg`'s optimizer keeps for `n` parameters.
    pub fn for_config(be: &B, dtype: DType, n: usize, cfg: &crate::Config) -> Result<Self> {
        let mut s = Self::new(be, dtype, n)?;
        if cfg.optimizer.kind == "ademamix" {
            s.m2 = Some(crate::alloc::alloc(be, "AdEMAMix's slow moment", dtype, n)?);
            s.mix_steps = match cfg.optimizer.mix_warmup_steps {
                0 => cfg.training.steps,
                k => k,
            };
        }
        Ok(s)
    }

    /// Use Muon or Scion (`cfg.optimizer.kind`), built by the trainer that knows the shards.
    pub fn set_matrix(&mut self, m: matrix::MatrixOpt<B>) {
        self.matrix = Some(m);
    }

    /// Whether a matrix optimizer (Muon, Scion) takes the steps.
    pub fn is_matrix(&self) -> bool {
        self.matrix.is_some()
    }

    /// The state buffers in checkpoint order (see [`crate::ckpt::parts`]).
    pub fn buffers(&self) -> Vec<&B::Buffer> {
        let mut v = vec![&self.m, &self.v];
        v.extend(self.m2.as_ref());
        v
    }
    pub fn buffers_mut(&mut self) -> Vec<&mut B::Buffer> {
        let mut v = vec![&mut self.m, &mut self.v];
        v.extend(self.m2.as_mut());
        v
    }

    /// `Σ g²` over `grads`.
    pub fn sum_squares(&mut self, be: &B, grads: B::Ref<'_>) -> Result<f64> {
        be.fill(w::<B>(&mut self.acc), 0.0, 1)?;
        be.sum_squares(w::<B>(&mut self.acc), grads, grads.len())?;
        Ok(download_f64(be, B::view(&self.acc))?[0])
    }

    /// One AdamW step over consecutive segments `(length, decays, learning-rate factor)`
    /// covering the buffers, with
    /// the global gradient norm `norm` already known (a sharded run sums it over ranks).
    #[allow(clippy::too_many_arguments)]
    pub fn step_segments(
        &mut self,
        be: &B,
        o: &Optimizer,
        segs: &[(usize, bool, f64)],
        params: B::Mut<'_>,
        grads: B::Ref<'_>,
        lr: f64,
        norm: f64,
    ) -> Result<()> {
        let scale = if o.grad_clip > 0.0 && norm > o.grad_clip {
            o.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.step += 1;
        let mix = mix_at(o, self.step as u64, self.mix_steps);
        let (mut p, mut m, mut v, mut g) =
            (params, B::view_mut(&mut self.m), B::view_mut(&mut self.v), grads);
        let mut m2 = self.m2.as_mut().map(|b| B::view_mut(b));
        for &(n, decays, lr_scale) in segs {
            let (pe, pr) = p.split_at(n);
            let (me, mr) = m.split_at(n);
            let (ve, vr) = v.split_at(n);
            let (ge, gr) = g.split_at(n);
            let h = AdamW {
                lr: lr * lr_scale,
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: if decays { o.weight_decay } else { 0.0 },
                step: self.step,
                grad_scale: scale,
            };
            match m2.take() {
                Some(m2v) => {
                    let (m2e, m2r) = m2v.split_at(n);
                    be.ademamix_update(pe, me, m2e, ve, ge, h, mix, n)?;
                    m2 = Some(m2r);
                }
                None => be.adamw_update(pe, me, ve, ge, h, n)?,
            }
            (p, m, v, g) = (pr, mr, vr, gr);
        }
        Ok(())
    }
}

impl<B: Ops> AdamWState<B> {
    /// One Muon/Scion step (see [`Self::set_matrix`]) on the backend's buffers: clip to
    /// `o.grad_clip` with the global norm `norm` (this buffer's own when `None`), then update.
    /// `comm`: the data communicator of the owners group the matrices are dealt over (`None`:
    /// one process). Returns the norm.
    #[allow(clippy::too_many_arguments)]
    pub fn step_matrix(
        &mut self,
        be: &B,
        comm: Option<&dyn weft_parallel::Comm<B>>,
        o: &Optimizer,
        params: &mut B::Buffer,
        grads: &B::Buffer,
        lr: f64,
        norm: Option<f64>,
    ) -> Result<f64> {
        let norm = match norm {
            Some(n) => n,
            None => self.sum_squares(be, B::view(grads))?.sqrt(),
        };
        let scale = if o.grad_clip > 0.0 && norm > o.grad_clip {
            o.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.step += 1;
        let opt = self
            .matrix
            .as_mut()
            .ok_or_else(|| crate::Error::Other("no matrix optimizer set".into()))?;
        opt.step(
            be,
            comm,
            o,
            (params, &mut self.m, &mut self.v),
            grads,
            lr,
            scale,
            self.step,
        )?;
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(schedule: &str) -> Optimizer {
        crate::Config::from_toml(&format!(
            "[job]\nname='x'\n[model]\nkind='gpt'\nwidth=8\ndepth=1\nheads=2\nvocab_size=4\nseq_len=4\n\
             [data]\nkind='tokens'\npath='x'\n[training]\nsteps=100\nmicro_batch=1\n\
             [optimizer]\nlr=1.0\nmin_lr_ratio=0.1\nwarmup_steps=10\nschedule='{schedule}'\ndecay_fraction=0.5"
        ))
        .unwrap()
        .optimizer
    }

    #[test]
    fn schedules_warm_up_then_decay_to_the_floor() {
        let c = opt("cosine");
        assert!((lr_at(&c, 100, 0) - 0.1).abs() < 1e-12);
        assert!((lr_at(&c, 100, 9) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 100, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 100, 55) - 0.55).abs() < 1e-12); // halfway: (1 + 0.1) / 2
        assert!((lr_at(&c, 100, 100) - 0.1).abs() < 1e-12);
        let s = opt("wsd");
        assert_eq!(lr_at(&s, 100, 40), 1.0);
        assert_eq!(lr_at(&s, 100, 55), 1.0);
        assert!((lr_at(&s, 100, 100) - 0.1).abs() < 1e-12);
        assert!((lr_at(&s, 100, 77) - (1.0 - 0.9 * (67.0 / 90.0 - 0.5) / 0.5)).abs() < 1e-12);
        assert_eq!(lr_at(&opt("constant"), 100, 99), 1.0);
    }
}
