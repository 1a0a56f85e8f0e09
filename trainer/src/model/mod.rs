//! Models as explicit layers over the kernels' ops: [`Dit`] (video diffusion transformer) and
//! [`Gpt`] (decoder-only LM), both built from one [`block::Block`].
//!
//! A model owns its activations (allocated once, for one micro-batch shape) and reads its
//! parameters from a flat buffer described by its [`Layout`]. `forward` runs the layers in
//! order and returns the loss; `backward` is the explicit reverse walk that *accumulates*
//! parameter gradients into a flat gradient buffer of the same layout (so micro-batches add
//! up), following the kernels' gradient convention.

mod acts;
pub mod block;
mod block_params;
pub mod dit;
pub mod gpt;
mod par;
mod spec;
mod trunk;

pub use dit::{Dit, DitBatch};
pub use gpt::{Gpt, TokenBatch};
pub use par::Par;

use crate::{Layout, Result};
use std::ops::Range;
use weft_kernels::{Backend, DType, HostVec, Ops, Slice};

/// What the training loop needs of a model.
pub trait Model<B: Ops> {
    /// One micro-batch on the host.
    type Batch;
    fn layout(&self) -> &Layout;
    /// Run forward on `batch` and add the micro-batch's mean loss (this rank's share of it
    /// under tp/cp) into `acc[0]` on the device (an f64 scalar), without waiting for the
    /// device: a step downloads its losses once, at its end.
    fn forward_into(
        &mut self,
        be: &B,
        wt: &mut dyn Weights<B>,
        batch: &Self::Batch,
        acc: B::Mut<'_>,
    ) -> Result<()>;
    /// Run forward on `batch` and return the mean loss of the micro-batch.
    fn forward_with(&mut self, be: &B, wt: &mut dyn Weights<B>, batch: &Self::Batch) -> Result<f64> {
        // Allocations are zero-filled.
        let mut acc = be.alloc(DType::F64, 1)?;
        self.forward_into(be, wt, batch, B::view_mut(&mut acc))?;
        Ok(download_f64(be, B::view(&acc))?[0])
    }
    /// Backward of the last forward with `d loss = dloss` (`1/grad_accum` when accumulating);
    /// adds into the gradients of `wt`.
    fn backward_with(&mut self, be: &B, wt: &mut dyn Weights<B>, dloss: f64) -> Result<()>;
    /// [`Model::forward_with`] on one flat parameter buffer.
    fn forward(&mut self, be: &B, params: B::Ref<'_>, batch: &Self::Batch) -> Result<f64> {
        let mut f = Flat::new(self.layout(), params, None);
        self.forward_with(be, &mut f, batch)
    }
    /// [`Model::backward_with`] on flat buffers; adds into `grads` (same layout as the
    /// parameters).
    fn backward(&mut self, be: &B, params: B::Ref<'_>, mut grads: B::Mut<'_>, dloss: f64) -> Result<()> {
        let mut f = Flat::new(self.layout(), B::share(&params), Some(B::rb(&mut grads)));
        self.backward_with(be, &mut f, dloss)
    }
    /// Model FLOPs of one forward+backward over one micro-batch (matmuls and attention, the
    /// convention MFU is quoted in).
    fn flops_per_micro_batch(&self) -> f64;
    /// Samples (clips or sequences) per micro-batch, and tokens per sample.
    fn batch_shape(&self) -> (usize, usize);
    /// Bytes of the activations, saved for backward and scratch, this model allocated.
    fn activation_bytes(&self) -> usize;
    /// Positions in `batch` of the samples whose inputs hold NaN or infinity: a non-finite
    /// loss on such a batch is the data's fault, on finite inputs it is divergence.
    fn non_finite_samples(&self, batch: &Self::Batch) -> Vec<usize>;
}

/// Upload f32 host data into a device buffer of any float dtype (bf16: rounded to nearest
/// even).
pub fn upload_f32<B: Backend>(be: &B, src: &[f32], dst: B::Mut<'_>) -> Result<()> {
    match dst.dtype() {
        DType::F32 => be.upload(src.into(), dst)?,
        DType::F64 => {
            let v: Vec<f64> = src.iter().map(|&x| x as f64).collect();
            be.upload((&v).into(), dst)?
        }
        DType::BF16 => {
            let v: Vec<weft_kernels::bf16> = src.iter().map(|&x| weft_kernels::f32_to_bf16_rne(x)).collect();
            be.upload((&v).into(), dst)?
        }
        other => return Err(crate::Error::Other(format!("unsupported model dtype {other}"))),
    }
    Ok(())
}

/// Upload f64 host data into a device buffer of any float dtype (narrowing once).
pub fn upload_f64<B: Backend>(be: &B, src: &[f64], dst: B::Mut<'_>) -> Result<()> {
    match dst.dtype() {
        DType::F64 => be.upload(src.into(), dst)?,
        _ => return upload_f32(be, &src.iter().map(|&x| x as f32).collect::<Vec<_>>(), dst),
    }
    Ok(())
}

/// Download any float buffer as f64.
pub fn download_f64<B: Backend>(be: &B, src: B::Ref<'_>) -> Result<Vec<f64>> {
    let mut h = HostVec::zeros(src.dtype(), src.len());
    be.download(src, h.view_mut())?;
    Ok(match h {
        HostVec::F64(v) => v,
        HostVec::F32(v) => v.into_iter().map(|x| x as f64).collect(),
        HostVec::BF16(v) => v.into_iter().map(|x| x.to_f64()).collect(),
        other => {
            return Err(crate::Error::Other(format!(
                "unsupported model dtype {}",
                other.dtype()
            )))
        }
    })
}

/// Download any float buffer as f32 (f64 rounded to nearest).
pub fn download_f32<B: Backend>(be: &B, src: B::Ref<'_>) -> Result<Vec<f32>> {
    let mut h = HostVec::zeros(src.dtype(), src.len());
    be.download(src, h.view_mut())?;
    Ok(match h {
        HostVec::F32(v) => v,
        HostVec::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        HostVec::BF16(v) => v.into_iter().map(|x| x.to_f32()).collect(),
        other => {
            return Err(crate::Error::Other(format!(
                "unsupported model dtype {}",
                other.dtype()
            )))
        }
    })
}

/// Buffers of one dtype, allocated zeroed; counts the bytes it hands out (a model's
/// activation and scratch memory).
pub(crate) struct Alloc<'a, B: Backend> {
    pub be: &'a B,
    pub dt: DType,
    pub bytes: std::cell::Cell<usize>,
}

impl<'a, B: Backend> Alloc<'a, B> {
    pub fn new(be: &'a B, dt: DType) -> Self {
        Alloc {
            be,
            dt,
            bytes: std::cell::Cell::new(0),
        }
    }
    pub fn buf(&self, n: usize) -> Result<B::Buffer> {
        self.bytes
            .set(self.bytes.get().saturating_add(n.saturating_mul(self.dt.size())));
        crate::alloc::alloc(self.be, "the activations", self.dt, n)
    }
    pub fn opt(&self, on: bool, n: usize) -> Result<Option<B::Buffer>> {
        Ok(if on { Some(self.buf(n)?) } else { None })
    }
    /// A buffer of statistics (norm means and reciprocal deviations, log-sum-exps, losses,
    /// timesteps): f32 when the activations are 16-bit, as the kernels' contract asks.
    pub fn stat(&self, n: usize) -> Result<B::Buffer> {
        let dt = weft_kernels::stat_dtype(self.dt);
        self.bytes
            .set(self.bytes.get().saturating_add(n.saturating_mul(dt.size())));
        crate::alloc::alloc(self.be, "the activations", dt, n)
    }
}

/// The view of a whole buffer.
pub(crate) fn r<B: Backend>(b: &B::Buffer) -> B::Ref<'_> {
    B::view(b)
}
/// The exclusive view of a whole buffer.
pub(crate) fn w<B: Backend>(b: &mut B::Buffer) -> B::Mut<'_> {
    B::view_mut(b)
}

/// A parameter tensor's view inside the flat buffer.
pub(crate) fn at<S: Slice>(v: S, r: &Range<usize>) -> S {
    v.range(r.clone())
}

/// Two disjoint ranges of one exclusive view, e.g. a weight's and its bias's gradient.
pub(crate) fn pair<S: Slice>(v: S, a: &Range<usize>, b: Option<&Range<usize>>) -> (S, Option<S>) {
    match b {
        None => (v.range(a.clone()), None),
        Some(b) if a.end <= b.start => {
            let (head, tail) = v.split_at(b.start);
            (head.range(a.clone()), Some(tail.range(0..b.end - b.start)))
        }
        Some(b) => {
            assert!(b.end <= a.start, "overlapping parameter ranges {a:?} and {b:?}");
            let (head, tail) = v.split_at(a.start);
            (tail.range(0..a.end - a.start), Some(head.range(b.clone())))
        }
    }
}

/// Copy rows `positions` of every sample of `src (B, T, row)` into `dst (B, positions, row)`
/// (`(T, row)` given as `rows`), one copy per contiguous run.
pub(crate) fn select_rows<B: Ops>(
    be: &B,
    src: B::Ref<'_>,
    mut dst: B::Mut<'_>,
    b: usize,
    (t, row): (usize, usize),
    positions: &[usize],
) -> Result<()> {
    let mut runs: Vec<(usize, usize)> = vec![];
    for &p in positions {
        match runs.last_mut() {
            Some((s, l)) if *s + *l == p => *l += 1,
            _ => runs.push((p, 1)),
        }
    }
    let mut at = 0;
    for s in 0..b {
        for &(p, l) in &runs {
            let n = l * row;
            let from = B::share(&src).range((s * t + p) * row..(s * t + p) * row + n);
            be.cast(B::rb(&mut dst).range(at..at + n), from, n)?;
            at += n;
        }
    }
    Ok(())
}

/// Matmul FLOPs of `rows × (in → out)` forward and backward (2 + 4 per multiply-add).
pub(crate) fn linear_flops(rows: usize, inp: usize, out: usize) -> f64 {
    6.0 * rows as f64 * inp as f64 * out as f64
}

/// Where a model finds its parameters and accumulates its gradients, one *unit* at a time
/// (see [`Layout::units`]: input layers, each block, output layers). Views are relative to the
/// unit's start.
///
/// [`Flat`] hands out ranges of one flat buffer; the FSDP store gathers a unit's shards on
/// demand (prefetching the next one while the current one computes), frees it after use and
/// reduce-scatters its gradients once they are complete.
pub trait Weights<B: Backend> {
    /// Unit `u`'s parameters.
    fn get(&mut self, be: &B, u: usize) -> Result<B::Ref<'_>>;
    /// Unit `u`'s parameters and its gradient accumulator.
    fn get_mut(&mut self, be: &B, u: usize) -> Result<(B::Ref<'_>, B::Mut<'_>)>;
    /// Unit `u` will be needed next.
    fn prefetch(&mut self, _be: &B, _u: usize) -> Result<()> {
        Ok(())
    }
    /// This pass is done with unit `u`'s parameters.
    fn release(&mut self, _be: &B, _u: usize) -> Result<()> {
        Ok(())
    }
    /// Unit `u`'s gradients for this micro-batch are complete.
    fn grads_done(&mut self, _be: &B, _u: usize) -> Result<()> {
        Ok(())
    }
}

/// All parameters (and gradients) in one flat buffer.
pub struct Flat<'a, B: Backend> {
    pub params: B::Ref<'a>,
    pub grads: Option<B::Mut<'a>>,
    pub units: Vec<Range<usize>>,
}

impl<'a, B: Backend> Flat<'a, B> {
    pub fn new(layout: &Layout, params: B::Ref<'a>, grads: Option<B::Mut<'a>>) -> Self {
        Flat {
            params,
            grads,
            units: layout.units(),
        }
    }
}

impl<B: Backend> Weights<B> for Flat<'_, B> {
    fn get(&mut self, _: &B, u: usize) -> Result<B::Ref<'_>> {
        Ok(B::share(&self.params).range(self.units[u].clone()))
    }
    fn get_mut(&mut self, _: &B, u: usize) -> Result<(B::Ref<'_>, B::Mut<'_>)> {
        let g = self
            .grads
            .as_mut()
            .ok_or_else(|| crate::Error::Other("backward needs a gradient buffer".into()))?;
        let r = self.units[u].clone();
        Ok((B::share(&self.params).range(r.clone()), B::rb(g).range(r)))
    }
}

/// Shift every range of a unit by `-start` (unit-relative offsets).
pub(crate) fn rebase(r: &Range<usize>, start: usize) -> Range<usize> {
    r.start - start..r.end - start
}

/// Report `x`'s mean |value| as layer type `kind` to a running coordinate check (nothing
/// otherwise).
pub(crate) fn note<B: Backend>(be: &B, kind: &'static str, x: B::Ref<'_>) -> Result<()> {
    if crate::observe::coord::on() && !x.is_empty() {
        let v = download_f64(be, x)?;
        crate::observe::coord::record(kind, v.iter().map(|a| a.abs()).sum::<f64>() / v.len() as f64);
    }
    Ok(())
}
