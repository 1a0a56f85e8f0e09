//! FSDP: each unit of the flat parameter buffer (input layers, every block, output layers) is
//! split into `dp_shard` equal pieces (the last padded with zeros); a rank keeps only its piece
//! of the parameters, gradients and optimizer state.
//!
//! Forward all-gathers a unit when it is needed, starting the next block's gather in the
//! background while the current block computes, and frees the gathered copy after use.
//! Backward gathers again, accumulates the unit's full gradient, and as soon as the unit is
//! done starts its reduce-scatter, which lands in this rank's gradient shard while earlier
//! blocks compute. The input and output layers stay gathered for the whole micro-batch.
//!
//! Mixed precision ([`Precision`]): the shard holds the master parameters and accumulated
//! gradients (f32); a gather casts the shard to the compute dtype first (bf16: half the
//! bytes on the wire and in memory); a unit's gradient is accumulated in the master dtype
//! during backward and reduce-scattered in the reduce dtype.
//!
//! The collectives' buffers come from a pool (`pool.rs`) and go back to it when done, so a step
//! allocates nothing after its first micro-batch.

use super::pool::Pool;
use crate::job::Precision;
use crate::model::Weights;
use crate::{Error, Layout, Result};
use std::ops::Range;
use std::time::{Duration, Instant};
use weft_kernels::{Backend, DType, Ops, Slice};
use weft_parallel::{Collective, Comm, Pending};

/// Bytes a rank holds, by purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    pub params: usize,
    pub grads: usize,
    pub optimizer: usize,
    /// Activations saved for backward and scratch (this rank's tokens, heads and hidden
    /// units).
    pub activations: usize,
    /// Gathered parameters, full gradients and buffers in flight, at their peak.
    pub comm_peak: usize,
    /// Gathered parameter units (in the compute dtype) alone, at their peak.
    pub gathered_peak: usize,
    /// What the device's driver reports in use, and its size, at the end of the run (`None`
    /// on the CPU, whose memory is the host's).
    pub device_in_use: Option<usize>,
    pub device_total: Option<usize>,
}

/// Time spent on parameter gathers: waiting for them (exposed) and in total when they ran
/// without overlap (measured by [`Fsdp::set_prefetch`]`(false)` runs).
#[derive(Clone, Copy, Debug, Default)]
pub struct CommTime {
    pub gather_wait: Duration,
    pub gathers: usize,
}

pub struct Fsdp<'c, B: Backend> {
    comm: &'c dyn Comm<B>,
    prec: Precision,
    units: Vec<Range<usize>>,
    /// Per-unit shard length and offset of the unit's shard in the shard buffers.
    m: Vec<usize>,
    off: Vec<usize>,
    pub params: B::Buffer,
    pub grads: B::Buffer,
    gathered: Vec<Option<B::Buffer>>,
    gathering: Vec<Option<Pending<B>>>,
    full_grads: Vec<Option<B::Buffer>>,
    reducing: Vec<Option<Pending<B>>>,
    pool: Pool<B>,
    prefetch: bool,
    live: usize,
    pub peak: usize,
    gathered_live: usize,
    pub gathered_peak: usize,
    pub time: CommTime,
}

impl<'c, B: Ops> Fsdp<'c, B> {
    /// Shard `full` (the whole flat parameter vector of `layout`, identical on every rank of
    /// `comm`) and keep this rank's pieces, in `prec.master`.
    pub fn new(
        be: &B,
        comm: &'c dyn Comm<B>,
        layout: &Layout,
        full: &[f32],
        prec: Precision,
    ) -> Result<Self> {
        let dtype = prec.master;
        let (ds, s) = (comm.size(), comm.rank());
        let units = layout.units();
        let m: Vec<usize> = units.iter().map(|u| u.len().div_ceil(ds)).collect();
        let off: Vec<usize> = m
            .iter()
            .scan(0, |acc, &n| Some(std::mem::replace(acc, *acc + n)))
            .collect();
        let total: usize = m.iter().sum();
        let mut host: Vec<f32> = crate::alloc::host_zeros("the parameter shard (f32 staging)", total)?;
        for (u, r) in units.iter().enumerate() {
            let lo = (r.start + s * m[u]).min(r.end);
            let hi = (r.start + (s + 1) * m[u]).min(r.end);
            host[off[u]..off[u] + hi - lo].copy_from_slice(&full[lo..hi]);
        }
        let mut params = crate::alloc::alloc(be, "the parameter shard", dtype, total)?;
        crate::model::upload_f32(be, &host, B::view_mut(&mut params))?;
        let n = units.len();
        Ok(Fsdp {
            comm,
            prec,
            m,
            off,
            params,
            grads: crate::alloc::alloc(be, "the gradient shard", dtype, total)?,
            gathered: (0..n).map(|_| None).collect(),
            gathering: (0..n).map(|_| None).collect(),
            full_grads: (0..n).map(|_| None).collect(),
            reducing: (0..n).map(|_| None).collect(),
            pool: Pool::default(),
            units,
            prefetch: true,
            live: 0,
            peak: 0,
            gathered_live: 0,
            gathered_peak: 0,
            time: CommTime::default(),
        })
    }

    /// Start the next block's gather early (default) or only when it is needed.
    pub fn set_prefetch(&mut self, on: bool) {
        self.prefetch = on;
    }

    /// Communication buffers allocated so far (the rest were reused).
    pub fn buffers_allocated(&self) -> usize {
        self.pool.allocated
    }

    pub fn shard_len(&self) -> usize {
        self.m.iter().sum()
    }

    /// `(length, decays, learning-rate factor)` segments of this rank's shard, in order, for the optimizer; padding
    /// is a segment without decay (its parameters and gradients stay zero).
    pub fn segments(&self, layout: &Layout) -> Vec<(usize, bool, f64)> {
        let scale = |r: &Option<Range<usize>>| {
            r.as_ref()
                .and_then(|r| layout.entries.iter().find(|e| e.range().contains(&r.start)))
                .map_or(1.0, |e| e.lr_scale)
        };
        self.pieces(layout)
            .into_iter()
            .map(|(n, d, r)| (n, d, scale(&r)))
            .collect()
    }

    /// `(length, decays, global range)` of every piece of this rank's shard, in order and
    /// covering it (`None`: padding).
    pub fn pieces(&self, layout: &Layout) -> Vec<(usize, bool, Option<Range<usize>>)> {
        self.pieces_for(layout, self.comm.rank())
    }

    /// [`Fsdp::pieces`] of shard rank `s`.
    pub fn pieces_for(&self, layout: &Layout, s: usize) -> Vec<(usize, bool, Option<Range<usize>>)> {
        let mut out = Vec::new();
        for (u, r) in self.units.iter().enumerate() {
            let lo = (r.start + s * self.m[u]).min(r.end);
            let hi = (r.start + (s + 1) * self.m[u]).min(r.end);
            // Tensors, the alignment padding between them, and the zeros that fill the
            // unit's last shard.
            let mut at = lo;
            for e in &layout.entries {
                let (a, b) = (e.offset.max(lo), (e.offset + e.numel()).min(hi));
                if a < b {
                    if a > at {
                        out.push((a - at, false, None));
                    }
                    out.push((b - a, e.role.decays(), Some(a..b)));
                    at = b;
                }
            }
            let pad = self.m[u] - (at - lo);
            if pad > 0 {
                out.push((pad, false, None));
            }
        }
        out
    }

    fn track(&mut self, delta: isize) {
        self.live = (self.live as isize + delta) as usize;
        self.peak = self.peak.max(self.live);
    }

    /// Gathered units come and go (`delta` units of `m` elements each, in the compute dtype).
    fn track_gathered(&mut self, u: usize, delta: isize) {
        let bytes = (self.m[u] * self.comm.size() * self.prec.param.size()) as isize;
        self.gathered_live = (self.gathered_live as isize + delta * bytes) as usize;
        self.gathered_peak = self.gathered_peak.max(self.gathered_live);
        self.track(delta * bytes);
    }

    /// The master dtype (parameters, gradients and optimizer state).
    pub fn master_dtype(&self) -> DType {
        self.prec.master
    }

    fn start_gather(&mut self, be: &B, u: usize) -> Result<()> {
        if self.gathered[u].is_some() || self.gathering[u].is_some() {
            return Ok(());
        }
        let (m, ds, dt) = (self.m[u], self.comm.size(), self.prec.param);
        // Both are written whole (the cast, the gather): reused contents do not matter.
        let mut send = self.pool.take(be, dt, m)?;
        let src = B::view(&self.params).range(self.off[u]..self.off[u] + m);
        be.cast(B::view_mut(&mut send), src, m)?;
        let recv = self.pool.take(be, dt, m * ds)?;
        self.track((m * dt.size()) as isize);
        self.track_gathered(u, 1);
        self.gathering[u] = Some(self.comm.start(be, Collective::AllGather, send, recv)?);
        Ok(())
    }

    fn ensure(&mut self, be: &B, u: usize) -> Result<()> {
        if self.gathered[u].is_some() {
            return Ok(());
        }
        self.start_gather(be, u)?;
        let t = Instant::now();
        let (send, full) = self.gathering[u].take().expect("gather started").wait()?;
        self.pool.give(send);
        self.time.gather_wait += t.elapsed();
        self.time.gathers += 1;
        self.track(-((self.m[u] * self.prec.param.size()) as isize));
        self.gathered[u] = Some(full);
        Ok(())
    }

    fn outer(&self, u: usize) -> bool {
        u == 0 || u + 1 == self.units.len()
    }

    /// Wait for every reduce-scatter of this micro-batch and add the results into the
    /// gradient shard; free the input and output layers' gathered copies.
    pub fn finish_micro_batch(&mut self, be: &B) -> Result<()> {
        for u in 0..self.units.len() {
            if let Some(p) = self.reducing[u].take() {
                let (send, part) = p.wait()?;
                let m = self.m[u];
                let dst = B::view_mut(&mut self.grads).range(self.off[u]..self.off[u] + m);
                be.accumulate(dst, B::view(&part), m)?;
                self.pool.give(send);
                self.pool.give(part);
                self.track(-((m * (self.comm.size() + 1) * self.prec.reduce.size()) as isize));
            }
            if self.full_grads[u].is_some() {
                return Err(Error::Other(format!(
                    "unit {u}: gradients were never marked complete"
                )));
            }
            if let Some(g) = self.gathered[u].take() {
                self.pool.give(g);
                self.track_gathered(u, -1);
            }
        }
        Ok(())
    }
}

impl<B: Ops> Weights<B> for Fsdp<'_, B> {
    fn get(&mut self, be: &B, u: usize) -> Result<B::Ref<'_>> {
        self.ensure(be, u)?;
        let n = self.units[u].len();
        Ok(B::view(self.gathered[u].as_ref().expect("gathered")).range(0..n))
    }

    fn get_mut(&mut self, be: &B, u: usize) -> Result<(B::Ref<'_>, B::Mut<'_>)> {
        self.ensure(be, u)?;
        let full = self.m[u] * self.comm.size();
        if self.full_grads[u].is_none() {
            // The model adds into it: zero a reused buffer.
            let mut g = self.pool.take(be, self.prec.master, full)?;
            be.fill(B::view_mut(&mut g), 0.0, full)?;
            self.full_grads[u] = Some(g);
            self.track((full * self.prec.master.size()) as isize);
        }
        let n = self.units[u].len();
        let p = B::view(self.gathered[u].as_ref().expect("gathered")).range(0..n);
        let g = B::view_mut(self.full_grads[u].as_mut().expect("allocated")).range(0..n);
        Ok((p, g))
    }

    fn prefetch(&mut self, be: &B, u: usize) -> Result<()> {
        if self.prefetch {
            self.start_gather(be, u)?;
        }
        Ok(())
    }

    fn release(&mut self, _be: &B, u: usize) -> Result<()> {
        if !self.outer(u) {
            if let Some(g) = self.gathered[u].take() {
                self.pool.give(g);
                self.track_gathered(u, -1);
            }
        }
        Ok(())
    }

    fn grads_done(&mut self, be: &B, u: usize) -> Result<()> {
        let full = self.full_grads[u]
            .take()
            .ok_or_else(|| Error::Other(format!("unit {u}: no gradients to reduce")))?;
        let (n, rd) = (self.m[u] * self.comm.size(), self.prec.reduce);
        // The unit's gradient in the reduce dtype (the master-dtype copy is freed here).
        let send = if rd == self.prec.master {
            full
        } else {
            // Both copies live until the cast is done.
            let mut send = self.pool.take(be, rd, n)?;
            self.track((n * rd.size()) as isize);
            be.cast(B::view_mut(&mut send), B::view(&full), n)?;
            self.pool.give(full);
            self.track(-((n * self.prec.master.size()) as isize));
            send
        };
        let recv = self.pool.take(be, rd, self.m[u])?;
        self.track((self.m[u] * rd.size()) as isize);
        self.reducing[u] = Some(self.comm.start(be, Collective::ReduceScatter, send, recv)?);
        Ok(())
    }
}
