//! Cross-entropy with z-loss, and mean squared error, on CPU.

use super::{indices, rows_per_task, with_float, CpuBackend, Real};
use crate::ops::{check, CrossEntropyDims, LossOps, ACTIVATION_FLOATS};
use crate::{HostMut, HostRef, Result};
use rayon::prelude::*;

fn row_lse<T: Real>(x: &[T]) -> T {
    let m = x.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
    m + x.iter().map(|&v| (v - m).exp()).sum::<T>().ln()
}

pub fn cross_entropy_forward<T: Real>(
    losses: &mut [T],
    lse: &mut [T],
    logits: &[T],
    targets: &[i32],
    d: &CrossEntropyDims,
) {
    let (v, z) = (d.v, T::of(d.z_loss));
    let task = rows_per_task(v);
    losses
        .par_chunks_mut(task)
        .zip(lse.par_chunks_mut(task))
        .zip(logits.par_chunks(v * task))
        .zip(targets.par_chunks(task))
        .for_each(|(((loss, lse), x), y)| {
            for (r, x) in x.chunks(v).enumerate() {
                let l = row_lse(x);
                lse[r] = l;
                loss[r] = if y[r] < 0 {
                    T::zero()
                } else {
                    l - x[y[r] as usize] + z * l * l
                };
            }
        });
}

pub fn cross_entropy_backward<T: Real>(
    dlogits: &mut [T],
    dlosses: &[T],
    logits: &[T],
    targets: &[i32],
    lse: &[T],
    d: &CrossEntropyDims,
) {
    let (v, z) = (d.v, T::of(d.z_loss));
    dlogits
        .par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .enumerate()
        .for_each(|(r, (dx, x))| {
            if targets[r] < 0 {
                dx.fill(T::zero());
                return;
            }
            let (g, l) = (dlosses[r], lse[r]);
            let zf = T::one() + T::of(2.0) * z * l;
            for i in 0..v {
                dx[i] = g * (x[i] - l).exp() * zf;
            }
            dx[targets[r] as usize] -= g;
        });
}

/// Summed in f64 (as `sum_squares`), so the f32 loss of a large clip is the rounded mean, not
/// a sequential f32 sum's drift.
pub fn mse_forward<T: Real>(pred: &[T], target: &[T]) -> T {
    let sum: f64 = pred
        .iter()
        .zip(target)
        .map(|(&p, &t)| {
            let d = (p - t).f64();
            d * d
        })
        .sum();
    T::of(sum / pred.len().max(1) as f64)
}

pub fn mse_backward<T: Real>(dpred: &mut [T], dloss: T, pred: &[T], target: &[T]) {
    let k = T::of(2.0) * dloss / T::of(pred.len().max(1) as f64);
    dpred
        .par_iter_mut()
        .zip(pred.par_iter().zip(target.par_iter()))
        .for_each(|(d, (&p, &t))| *d = k * (p - t));
}

impl LossOps for CpuBackend {
    fn cross_entropy_forward(
        &self,
        losses: HostMut<'_>,
        lse: HostMut<'_>,
        logits: HostRef<'_>,
        targets_: HostRef<'_>,
        d: CrossEntropyDims,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_forward";
        let dt = check::cross_entropy_forward(ACTIVATION_FLOATS, &losses, &lse, &logits, &targets_, &d)?;
        let targets = indices(OP, "targets", targets_, d.n, d.v, true)?;
        with_float!(dt, [losses, lse, logits], T => cross_entropy_forward::<T>(
            T::get_mut(losses), T::get_mut(lse), T::get(logits), targets, &d));
        Ok(())
    }

    fn cross_entropy_backward(
        &self,
        dlogits: HostMut<'_>,
        dlosses: HostRef<'_>,
        logits: HostRef<'_>,
        targets_: HostRef<'_>,
        lse: HostRef<'_>,
        d: CrossEntropyDims,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_backward";
        let dt = check::cross_entropy_backward(
            ACTIVATION_FLOATS,
            &dlogits,
            &dlosses,
            &logits,
            &targets_,
            &lse,
            &d,
        )?;
        let targets = indices(OP, "targets", targets_, d.n, d.v, true)?;
        with_float!(dt, [dlogits, dlosses, logits, lse], T => cross_entropy_backward::<T>(
            T::get_mut(dlogits), T::get(dlosses), T::get(logits), targets, T::get(lse), &d));
        Ok(())
    }

    fn mse_forward(&self, loss: HostMut<'_>, pred: HostRef<'_>, target: HostRef<'_>, n: usize) -> Result<()> {
        let dt = check::mse_forward(ACTIVATION_FLOATS, &loss, &pred, &target, n)?;
        with_float!(dt, [loss, pred, target], T => T::get_mut(loss)[0] = mse_forward::<T>(T::get(pred), T::get(target)));
        Ok(())
    }

    fn mse_backward(
        &self,
        dpred: HostMut<'_>,
        dloss: HostRef<'_>,
        pred: HostRef<'_>,
        target: HostRef<'_>,
        n: usize,
    ) -> Result<()> {
        let dt = check::mse_backward(ACTIVATION_FLOATS, &dpred, &dloss, &pred, &target, n)?;
        with_float!(dt, [dpred, dloss, pred, target], T => mse_backward::<T>(T::get_mut(dpred), T::get(dloss)[0], T::get(pred), T::get(target)));
        Ok(())
    }
}
