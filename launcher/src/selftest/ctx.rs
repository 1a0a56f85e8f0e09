//! One run of one case on one backend: its inputs (the same values on every backend), the
//! dtypes of the call, and the outputs it wrote, read back as f64.

use anyhow::Result;
use weft_kernels::gradcheck::SplitMix;
use weft_kernels::{bf16, stat_dtype, Backend, DType, HostVec, Role};

/// The dtypes of a run: the activation dtype the ops are called with, and the dtype every
/// input is rounded to first. The f64 reference run of a bf16 case stores f64 but rounds to
/// bf16, so both runs see the same values and only the kernels' own error is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prec {
    pub store: DType,
    pub round: DType,
}

impl Prec {
    /// A run that stores what it rounds to.
    pub fn native(dt: DType) -> Self {
        Prec { store: dt, round: dt }
    }
}

/// One output of a run: the op that wrote it, its argument name and its values.
#[derive(Clone, Debug)]
pub struct Output {
    pub op: &'static str,
    pub arg: &'static str,
    pub values: Vec<f64>,
}

/// What a case sees of the backend it runs on.
pub struct Ctx<'a, B: Backend> {
    pub be: &'a B,
    pub p: Prec,
    /// Outputs of this op get a deliberate error (to show the comparison catches one).
    fault: Option<&'a str>,
    pub outs: Vec<Output>,
}

impl<'a, B: Backend> Ctx<'a, B> {
    pub fn new(be: &'a B, p: Prec, fault: Option<&'a str>) -> Self {
        Ctx {
            be,
            p,
            fault,
            outs: Vec::new(),
        }
    }

    /// The activation dtype of the calls.
    pub fn act(&self) -> DType {
        self.p.store
    }

    /// The dtype of statistics (norm `rstd`, attention `lse`, losses, RoPE tables).
    pub fn stat(&self) -> DType {
        stat_dtype(self.p.store)
    }

    /// The dtype parameter gradients accumulate in (f32 for bf16 activations).
    pub fn grad(&self) -> DType {
        let allowed = Role::ParamGrad.allowed(self.p.store);
        allowed[allowed.len() - 1]
    }

    /// `n` values `scale·U[-1, 1)` from `seed`, rounded to the run's dtype, as an activation.
    pub fn input(&self, seed: u64, n: usize, scale: f64) -> Result<B::Buffer> {
        self.values(&random(seed, n, scale), self.p.round, self.p.store)
    }

    /// Like [`Ctx::input`], for a statistic-role input (timesteps, angle tables).
    pub fn stat_input(&self, values: &[f64]) -> Result<B::Buffer> {
        self.values(values, stat_dtype(self.p.round), self.stat())
    }

    /// Given values as an activation (rounded to the run's dtype).
    pub fn act_values(&self, values: &[f64]) -> Result<B::Buffer> {
        self.values(values, self.p.round, self.p.store)
    }

    /// `values` rounded to `round`, stored as `store`, on the device.
    pub fn values(&self, values: &[f64], round: DType, store: DType) -> Result<B::Buffer> {
        let rounded: Vec<f64> = values.iter().map(|&v| round_to(v, round)).collect();
        self.upload(&host(&rounded, store))
    }

    /// i32 ids or targets on the device.
    pub fn ints(&self, values: &[i32]) -> Result<B::Buffer> {
        self.upload(&HostVec::from(values.to_vec()))
    }

    /// A zero-filled device buffer.
    pub fn zeros(&self, dt: DType, n: usize) -> Result<B::Buffer> {
        Ok(self.be.alloc(dt, n)?)
    }

    fn upload(&self, h: &HostVec) -> Result<B::Buffer> {
        let mut buf = self.be.alloc(h.dtype(), h.len())?;
        self.be.upload(h.view(), B::view_mut(&mut buf))?;
        Ok(buf)
    }

    /// Read `buf` back as output `arg` of `op`.
    pub fn out(&mut self, op: &'static str, arg: &'static str, buf: &B::Buffer) -> Result<()> {
        let values = download(self.be, buf)?;
        self.push(op, arg, values);
        Ok(())
    }

    /// Record values derived on the host from what `op` wrote as its output `arg`.
    pub fn push(&mut self, op: &'static str, arg: &'static str, mut values: Vec<f64>) {
        if self.fault == Some(op) {
            if let Some(v) = values.first_mut() {
                *v += 1.0 + v.abs();
            }
        }
        self.outs.push(Output { op, arg, values });
    }
}

/// `n` values `scale·U[-1, 1)` from `seed`.
pub fn random(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    let mut r = SplitMix::new(seed);
    (0..n).map(|_| scale * r.uniform()).collect()
}

/// `v` rounded to the nearest value of `dt` (to nearest even), as f64.
pub fn round_to(v: f64, dt: DType) -> f64 {
    match dt {
        DType::F32 => v as f32 as f64,
        DType::BF16 => weft_kernels::f64_to_bf16_rne(v).to_f64(),
        DType::F16 => weft_kernels::f16::from_f64(v).to_f64(),
        _ => v,
    }
}

/// `x` stored in `dt` (already representable there).
pub fn host(x: &[f64], dt: DType) -> HostVec {
    match dt {
        DType::F32 => x.iter().map(|&v| v as f32).collect::<Vec<_>>().into(),
        DType::BF16 => x.iter().map(|&v| bf16::from_f64(v)).collect::<Vec<_>>().into(),
        DType::F16 => x
            .iter()
            .map(|&v| weft_kernels::f16::from_f64(v))
            .collect::<Vec<_>>()
            .into(),
        _ => x.to_vec().into(),
    }
}

/// A device buffer copied to the host and widened to f64.
pub fn download<B: Backend>(be: &B, buf: &B::Buffer) -> Result<Vec<f64>> {
    let view = B::view(buf);
    let mut h = HostVec::zeros(weft_kernels::Slice::dtype(&view), weft_kernels::Slice::len(&view));
    be.download(view, h.view_mut())?;
    Ok(match h {
        HostVec::F64(x) => x,
        HostVec::F32(x) => x.iter().map(|&v| v as f64).collect(),
        HostVec::BF16(x) => x.iter().map(|v| v.to_f64()).collect(),
        HostVec::F16(x) => x.iter().map(|v| v.to_f64()).collect(),
        HostVec::I32(x) => x.iter().map(|&v| v as f64).collect(),
        HostVec::U16(x) => x.iter().map(|&v| v as f64).collect(),
    })
}

/// `n` elements of `dt` on the device, a block of random values `U[-1, 1)` from `seed`
/// repeated (throughput inputs: large, and cheap to make).
pub fn tiled<B: Backend>(be: &B, dt: DType, n: usize, seed: u64) -> Result<B::Buffer> {
    let block = host(&random(seed, n.min(1 << 20), 1.0), dt);
    let mut buf = be.alloc(dt, n)?;
    let mut off = 0;
    while off < n {
        let len = (n - off).min(block.len());
        let dst = weft_kernels::Slice::range(B::view_mut(&mut buf), off..off + len);
        be.upload(block.view().split_at(len).0, dst)?;
        off += len;
    }
    Ok(buf)
}
