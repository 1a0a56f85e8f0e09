//! Muon and Scion: optimizers that update each weight matrix as a whole (an orthogonalized
//! or normalized direction), over the sharded flat buffer.
//!
//! A rank holds pieces of many matrices (FSDP shards cut across them, tensor parallelism
//! slices them). Each step, the matrices are dealt round robin to the ranks of the owners
//! group (`dp_shard × tp`, the ranks holding disjoint parameters), a bucket of one matrix
//! per rank at a time: every rank sends the pieces it holds to the matrix's owner
//! (all-to-all), the owner computes the direction of the whole matrix once, and sends each
//! rank its pieces back. One process is the same code with a group of one, so the sharded
//! result is the single-process result, bit for bit.
//!
//! Geometries (for a linear map `(d_out, d_in)`, stored `(out, in)`; a lookup table
//! `(vocab, width)` is the map's transpose):
//! - `Spectral`: `√(d_out/d_in)·UVᵀ` (Scion), or `rms_match·√max(d_out, d_in)·UVᵀ` (Muon),
//!   with `UVᵀ` from the quintic Newton–Schulz iteration (3.4445, −4.7750, 2.0315) on
//!   `G/‖G‖_F`, on the wide orientation;
//! - `ColNorm`: each input column scaled to norm `√d_out`;
//! - `RowNorm`: each output row scaled to norm `1/√d_in`;
//! - `Sign`: `sign(G)/d_in`;
//! - `Rms`: `g/RMS(g)` (vectors).

use crate::config::Optimizer;
use crate::layout::TpSplit;
use crate::shard::Run;
use crate::{Error, Layout, Result, Role};
use num_traits::Float;
use weft_kernels::{AdamW, Backend, CpuBackend, HostVec, OptimOps};
use weft_parallel::Comm;

/// How a tensor is updated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Geometry {
    /// Element-wise AdamW (Muon's embeddings, read-out and vectors).
    AdamW,
    Spectral,
    ColNorm,
    RowNorm,
    Sign,
    Rms,
}

/// One matrix (or vector) updated as a whole: elements `start..start + rows·cols` of its
/// entry's global tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub entry: usize,
    pub start: usize,
    pub rows: usize,
    pub cols: usize,
    pub geometry: Geometry,
    /// A lookup table: its linear map is the transpose of what is stored.
    pub table: bool,
    /// What multiplies the direction: Muon's RMS match, Scion's radius.
    pub radius: f64,
}

/// The geometry of every entry of `global` (the model at `tp = 1`) and the targets, in
/// layout order. Fused projections (`[q, k, v]`, `[gate, up]`) are one target per part.
pub fn plan(global: &Layout, o: &Optimizer) -> (Vec<Geometry>, Vec<Target>) {
    let muon = o.kind == "muon";
    let s = &o.scion;
    let named = |g: &str| match g {
        "colnorm" => Geometry::ColNorm,
        "rownorm" => Geometry::RowNorm,
        "sign" => Geometry::Sign,
        _ => Geometry::Spectral,
    };
    let mut geoms = vec![];
    let mut targets = vec![];
    for (i, e) in global.entries.iter().enumerate() {
        let matrix = e.shape.len() == 2;
        let (geometry, radius) = match (e.role, matrix) {
            (Role::Hidden, true) if muon => (Geometry::Spectral, o.muon.rms_match),
            _ if muon => (Geometry::AdamW, 0.0),
            (Role::Hidden, true) => (Geometry::Spectral, s.radius_hidden),
            (Role::Embedding, true) => (named(&s.embedding), s.radius_embedding),
            (Role::Output, true) => (named(&s.output), s.radius_output),
            _ => (Geometry::Rms, s.radius_vector),
        };
        geoms.push(geometry);
        if geometry == Geometry::AdamW {
            continue;
        }
        let cols: usize = if matrix { e.shape[1] } else { e.numel() };
        let groups = match &e.tp {
            TpSplit::Rows(g) if matrix && g.len() > 1 => g.clone(),
            _ => vec![e.numel() / cols],
        };
        let mut start = 0;
        for rows in groups {
            targets.push(Target {
                entry: i,
                start,
                rows,
                cols,
                geometry,
                table: e.name.ends_with(".table"),
                radius,
            });
            start += rows * cols;
        }
    }
    (geoms, targets)
}

/// The floating-point types the optimizer runs in.
pub trait Elem: Float + Default + Send + Sync + std::fmt::Debug + 'static {
    fn host(v: Vec<Self>) -> HostVec;
    fn slice(h: &HostVec) -> Option<&[Self]>;
    fn slice_mut(h: &mut HostVec) -> Option<&mut [Self]>;
    fn of(x: f64) -> Self {
        Self::from(x).expect("f64 converts")
    }
}

macro_rules! elem {
    ($t:ty, $v:ident) => {
        impl Elem for $t {
            fn host(v: Vec<Self>) -> HostVec {
                HostVec::$v(v)
            }
            fn slice(h: &HostVec) -> Option<&[Self]> {
                match h {
                    HostVec::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(h: &mut HostVec) -> Option<&mut [Self]> {
                match h {
                    HostVec::$v(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
elem!(f32, F32);
elem!(f64, F64);

/// `dst = alpha·dst + beta·op(a)·op(b)` on row-major matrices (`a: (m, k)`, `b: (k, n)`,
/// each given transposed when the flag is set).
#[allow(clippy::too_many_arguments)]
fn gemm<T: Elem>(m: usize, n: usize, k: usize, dst: &mut [T], a: &[T], ta: bool, b: &[T], tb: bool, beta: T) {
    assert!(dst.len() == m * n && a.len() == m * k && b.len() == k * n);
    // Strides of op(x): (column stride, row stride).
    let (a_cs, a_rs) = if ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if tb { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the asserted lengths cover every index the strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            T::zero(),
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The quintic Newton–Schulz iteration: an approximation of `UVᵀ` for `G = UΣVᵀ`
/// (`g: (rows, cols)` row-major, replaced by the result).
pub fn newton_schulz<T: Elem>(g: &mut [T], rows: usize, cols: usize, steps: usize) {
    let (a, b, c) = (T::of(3.4445), T::of(-4.7750), T::of(2.0315));
    // Work on the wide orientation (r ≤ c): the Gram matrix is the small side.
    let wide = rows <= cols;
    let (r, k) = if wide { (rows, cols) } else { (cols, rows) };
    let mut x: Vec<T> = if wide {
        g.to_vec()
    } else {
        (0..cols)
            .flat_map(|j| (0..rows).map(move |i| (i, j)))
            .map(|(i, j)| g[i * cols + j])
            .collect()
    };
    let norm = x.iter().fold(T::zero(), |s, &v| s + v * v).sqrt() + T::of(1e-7);
    x.iter_mut().for_each(|v| *v = *v / norm);
    let (mut gram, mut poly, mut next) = (
        vec![T::zero(); r * r],
        vec![T::zero(); r * r],
        vec![T::zero(); r * k],
    );
    for _ in 0..steps {
        // A = X·Xᵀ; B = b·A + c·A·A; X = a·X + B·X.
        gemm(r, r, k, &mut gram, &x, false, &x, true, T::one());
        gemm(r, r, r, &mut poly, &gram, false, &gram, false, c);
        poly.iter_mut().zip(&gram).for_each(|(p, &q)| *p = *p + b * q);
        gemm(r, k, r, &mut next, &poly, false, &x, false, T::one());
        x.iter_mut().zip(&next).for_each(|(v, &n)| *v = a * *v + n);
    }
    if wide {
        g.copy_from_slice(&x);
    } else {
        for i in 0..rows {
            for j in 0..cols {
                g[i * cols + j] = x[j * rows + i];
            }
        }
    }
}

/// Replace `g` (a whole target, stored row-major) by its update direction, radius included.
pub fn direction<T: Elem>(t: &Target, g: &mut [T], muon: bool, ns_steps: usize) {
    let (rows, cols) = (t.rows, t.cols);
    // The linear map's shape.
    let (d_out, d_in) = if t.table { (cols, rows) } else { (rows, cols) };
    let rho = T::of(t.radius);
    let norm = |v: &mut dyn Iterator<Item = T>| v.fold(T::zero(), |s, x| s + x * x).sqrt();
    let tiny = T::of(1e-12);
    match t.geometry {
        Geometry::AdamW => unreachable!("AdamW entries are not targets"),
        Geometry::Spectral => {
            newton_schulz(g, rows, cols, ns_steps);
            let scale = if muon {
                (d_out.max(d_in) as f64).sqrt()
            } else {
                (d_out as f64 / d_in as f64).sqrt()
            };
            let s = rho * T::of(scale);
            g.iter_mut().for_each(|v| *v = *v * s);
        }
        Geometry::Sign => {
            let s = rho / T::of(d_in as f64);
            g.iter_mut().for_each(|v| {
                *v = if *v > T::zero() {
                    s
                } else if *v < T::zero() {
                    -s
                } else {
                    T::zero()
                }
            });
        }
        Geometry::Rms => {
            let n = norm(&mut g.iter().copied());
            let s = rho * T::of((g.len() as f64).sqrt()) / (n + tiny);
            g.iter_mut().for_each(|v| *v = *v * s);
        }
        // Columns of the map: stored columns, or stored rows of a table.
        Geometry::ColNorm | Geometry::RowNorm => {
            let per_stored_row = (t.geometry == Geometry::ColNorm) == t.table;
            let target = if t.geometry == Geometry::ColNorm {
                T::of((d_out as f64).sqrt())
            } else {
                T::one() / T::of((d_in as f64).sqrt())
            };
            if per_stored_row {
                for row in g.chunks_mut(cols) {
                    let s = rho * target / (norm(&mut row.iter().copied()) + tiny);
                    row.iter_mut().for_each(|v| *v = *v * s);
                }
            } else {
                for j in 0..cols {
                    let n = norm(&mut (0..rows).map(|i| g[i * cols + j]));
                    let s = rho * target / (n + tiny);
                    (0..rows).for_each(|i| g[i * cols + j] = g[i * cols + j] * s);
                }
            }
        }
    }
}

/// The overlap of a run with a target: `(local offset, offset in the target, length)`.
fn overlap(r: &Run, t: &Target) -> Option<(usize, usize, usize)> {
    if r.entry != t.entry {
        return None;
    }
    let (g0, g1) = (r.global as usize, (r.global + r.len) as usize);
    let (t0, t1) = (t.start, t.start + t.rows * t.cols);
    let (a, b) = (g0.max(t0), g1.min(t1));
    (a < b).then(|| (r.local + a - g0, a - t0, b - a))
}

/// Muon or Scion for one rank: the plan, and the runs every rank of its owners group holds.
pub struct MatrixOpt {
    geometry: Vec<Geometry>,
    /// Whether AdamW decays each entry (see [`Role::decays`]), and its learning-rate factor.
    decays: Vec<bool>,
    lr_scale: Vec<f64>,
    targets: Vec<Target>,
    /// `members[i]`: the runs of the group's `i`-th rank (its shard of the flat buffer).
    members: Vec<Vec<Run>>,
    me: usize,
    /// Per bucket of targets, the block each rank sends each owner: the most elements any
    /// rank holds of any of its targets (fixed by the shards, so computed once).
    block: Vec<usize>,
}

impl MatrixOpt {
    /// `global`: the model at `tp = 1`; `members`: every owners-group rank's runs, in group
    /// order; `me`: this rank's index in the group.
    pub fn new(global: &Layout, o: &Optimizer, members: Vec<Vec<Run>>, me: usize) -> Self {
        let (geometry, targets) = plan(global, o);
        let size = members.len();
        let block = targets
            .chunks(size)
            .map(|bucket| {
                let held = |src: &Vec<Run>, t: &Target| -> usize {
                    src.iter().filter_map(|r| overlap(r, t)).map(|o| o.2).sum()
                };
                let most = members
                    .iter()
                    .flat_map(|src| bucket.iter().map(move |t| held(src, t)));
                most.max().unwrap_or(0)
            })
            .collect();
        MatrixOpt {
            block,
            geometry,
            decays: global.entries.iter().map(|e| e.role.decays()).collect(),
            lr_scale: global.entries.iter().map(|e| e.lr_scale).collect(),
            targets,
            members,
            me,
        }
    }

    /// One step: AdamW for the element-wise entries, momentum and the whole-matrix direction
    /// for the others (`scale`: the gradient-clip factor; `step`: 1-based, for AdamW).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        comm: Option<&dyn Comm<CpuBackend>>,
        o: &Optimizer,
        (params, m, v): (&mut HostVec, &mut HostVec, &mut HostVec),
        grads: &HostVec,
        lr: f64,
        scale: f64,
        step: u32,
    ) -> Result<()> {
        self.adamw_runs(o, (params, m, v), grads, lr, scale, step)?;
        match params {
            HostVec::F32(_) => self.matrix_step::<f32>(comm, o, params, m, grads, lr, scale),
            HostVec::F64(_) => self.matrix_step::<f64>(comm, o, params, m, grads, lr, scale),
            other => Err(Error::Other(format!(
                "{} optimizer on {:?} parameters",
                o.kind,
                other.dtype()
            ))),
        }
    }

    fn adamw_runs(
        &self,
        o: &Optimizer,
        (params, m, v): (&mut HostVec, &mut HostVec, &mut HostVec),
        grads: &HostVec,
        lr: f64,
        scale: f64,
        step: u32,
    ) -> Result<()> {
        let be = CpuBackend::new();
        let (mut p, mut mm, mut vv, mut g) = (
            CpuBackend::view_mut(params),
            CpuBackend::view_mut(m),
            CpuBackend::view_mut(v),
            CpuBackend::view(grads),
        );
        let mut at = 0;
        for r in &self.members[self.me] {
            if self.geometry[r.entry] != Geometry::AdamW {
                continue;
            }
            let skip = r.local - at;
            let n = r.len as usize;
            let (_, pr) = p.split_at(skip);
            let (pe, pr) = pr.split_at(n);
            let (_, mr) = mm.split_at(skip);
            let (me, mr) = mr.split_at(n);
            let (_, vr) = vv.split_at(skip);
            let (ve, vr) = vr.split_at(n);
            let (_, gr) = g.split_at(skip);
            let (ge, gr) = gr.split_at(n);
            let h = AdamW {
                lr: lr * self.lr_scale[r.entry],
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: if self.decays[r.entry] { o.weight_decay } else { 0.0 },
                step,
                grad_scale: scale,
            };
            be.adamw_update(pe, me, ve, ge, h, n)?;
            (p, mm, vv, g) = (pr, mr, vr, gr);
            at = r.local + n;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn matrix_step<T: Elem>(
        &self,
        comm: Option<&dyn Comm<CpuBackend>>,
        o: &Optimizer,
        params: &mut HostVec,
        m: &mut HostVec,
        grads: &HostVec,
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        let muon = o.kind == "muon";
        let dtype = || Error::Other("optimizer buffers of different dtypes".into());
        let (p, mo, g) = (
            T::slice_mut(params).ok_or_else(dtype)?,
            T::slice_mut(m).ok_or_else(dtype)?,
            T::slice(grads).ok_or_else(dtype)?,
        );
        // Momentum, on this rank's pieces.
        let (mu, s) = if muon {
            (T::of(o.muon.momentum), T::of(scale))
        } else {
            (T::of(o.scion.momentum), T::of(scale))
        };
        let nesterov = muon && o.muon.nesterov;
        let mut u = vec![T::zero(); p.len()];
        for r in self.members[self.me]
            .iter()
            .filter(|r| self.geometry[r.entry] != Geometry::AdamW)
        {
            for i in r.local..r.local + r.len as usize {
                let gi = s * g[i];
                mo[i] = if muon {
                    mu * mo[i] + gi
                } else {
                    mu * mo[i] + (T::one() - mu) * gi
                };
                u[i] = if nesterov { gi + mu * mo[i] } else { mo[i] };
            }
        }
        let dir = self.directions(
            comm,
            &u,
            muon,
            if muon { o.muon.ns_steps } else { o.scion.ns_steps },
        )?;
        let eta = T::of(lr);
        let keep = if muon {
            T::one() - eta * T::of(o.weight_decay)
        } else if o.scion.constrained {
            T::one() - eta
        } else {
            T::one()
        };
        for r in self.members[self.me]
            .iter()
            .filter(|r| self.geometry[r.entry] != Geometry::AdamW)
        {
            for i in r.local..r.local + r.len as usize {
                p[i] = keep * p[i] - eta * dir[i];
            }
        }
        Ok(())
    }

    /// Each target's direction, computed once on its owner; this rank's pieces of them.
    fn directions<T: Elem>(
        &self,
        comm: Option<&dyn Comm<CpuBackend>>,
        u: &[T],
        muon: bool,
        ns_steps: usize,
    ) -> Result<Vec<T>> {
        let size = self.members.len();
        let mut dir = vec![T::zero(); u.len()];
        let be = CpuBackend::new();
        let exchange = |send: Vec<T>| -> Result<Vec<T>> {
            match comm {
                Some(c) if size > 1 => {
                    let send = T::host(send);
                    let mut recv = T::host(vec![T::zero(); send.len()]);
                    c.all_to_all(&be, CpuBackend::view(&send), CpuBackend::view_mut(&mut recv))
                        .map_err(|e| Error::Other(format!("optimizer all-to-all: {e}")))?;
                    Ok(T::slice(&recv).expect("same dtype").to_vec())
                }
                _ => Ok(send),
            }
        };
        for (bucket, &len) in self.targets.chunks(size).zip(&self.block) {
            // To each owner, this rank's pieces of its target.
            let mut send = vec![T::zero(); size * len];
            for (d, t) in bucket.iter().enumerate() {
                let mut at = d * len;
                for (local, _, n) in self.members[self.me].iter().filter_map(|r| overlap(r, t)) {
                    send[at..at + n].copy_from_slice(&u[local..local + n]);
                    at += n;
                }
            }
            let recv = exchange(send)?;
            // The owner assembles its target, computes the direction, and returns the pieces.
            let mut back = vec![T::zero(); size * len];
            if let Some(t) = bucket.get(self.me) {
                let mut whole = vec![T::zero(); t.rows * t.cols];
                for src in 0..size {
                    let mut at = src * len;
                    for (_, off, n) in self.members[src].iter().filter_map(|r| overlap(r, t)) {
                        whole[off..off + n].copy_from_slice(&recv[at..at + n]);
                        at += n;
                    }
                }
                direction(t, &mut whole, muon, ns_steps);
                for src in 0..size {
                    let mut at = src * len;
                    for (_, off, n) in self.members[src].iter().filter_map(|r| overlap(r, t)) {
                        back[at..at + n].copy_from_slice(&whole[off..off + n]);
                        at += n;
                    }
                }
            }
            let mine = exchange(back)?;
            for (d, t) in bucket.iter().enumerate() {
                let mut at = d * len;
                for (local, _, n) in self.members[self.me].iter().filter_map(|r| overlap(r, t)) {
                    dir[local..local + n].copy_from_slice(&mine[at..at + n]);
                    at += n;
                }
            }
        }
        Ok(dir)
    }
}
