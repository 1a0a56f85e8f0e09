//! kernels/cuda/attention.cu against the CPU backend, f32 and bf16: forward (out, lse), the
//! backward's three launches (delta, dk/dv, dq) and the ring-attention merge, on shapes that are
//! not multiples of the tiles, with `TQ ≠ TK` both ways, causal with query/key offsets (rows
//! that see no key included), full, grouped-query heads, HD = 16, 20 (f32), 32, 64 and 128.
//!
//! ## Tolerances
//! Both sides compute from the same inputs in f32 but in different orders, so each output
//! element is bounded relative to its own *magnitude* `A`, the sum of the absolute values of the
//! terms it is made of, computed here in f64 from the definition (`u = 2⁻²⁴`):
//! - `out[i]`: `A = Σⱼ pᵢⱼ |vⱼ|`; `dv[j]`: `A = Σᵢ pᵢⱼ |dOᵢ|` (over the group's heads);
//!   `dq[i]`: `A = 2·scale·Σⱼ wᵢⱼ |kⱼ|`, `dk[j]`: `A = 2·scale·Σᵢ wᵢⱼ |qᵢ|`, with
//!   `wᵢⱼ = pᵢⱼ (Σ|dOᵢ vⱼ| + Σ|dOᵢ outᵢ|)`, which bounds `|dSᵢⱼ|` and the error of `dP` and
//!   `delta` (dot products of HD terms).
//! - **f32**: a score is a dot product of HD terms (error ≤ HD·u·σ, σ = scale·Σ|q||k|, which is a
//!   relative error of the probability), exp and the divisions add a few u, and sums of up to
//!   `n = max(TK, TQ·NH/NKV)` terms add ≤ n·u (the online softmax regroups them per tile; the
//!   worst case is linear). Each side has these errors, so `|Δ| ≤ K·u·A` with
//!   `K = 2·HD·(σmax + 1) + 2n + 16`; for lse, `|Δ| ≤ K·u·(1 + |lse|)`.
//! - **bf16**: inputs are bf16 values, exact in f32. The kernels round P (and dS in backward) to
//!   bf16 to feed the tensor cores, as FlashAttention does: a relative error ≤ 2⁻⁹ per term,
//!   so ≤ 2⁻⁹·A on the f32 result. Each side then rounds the result once to bf16 (≤ half a bf16
//!   ulp each, and the rounding may land on the neighbour): `|Δ| ≤ 2⁻⁸·A + ulp_bf16(|x|)`, the
//!   f32 terms above being far smaller. lse stays f32 on both sides: the f32 bound.
//! - The merge evaluates the CPU's formula in its order; the kernels' `expf`/`logf` are the C
//!   library's here (the CPU backend's too), a GPU's differ by an ulp or two: 2 ulps in f32, one
//!   bf16 ulp in bf16.
//!
//! Rows that see no key must come out exactly: out = 0, dq = 0, lse = −∞.

use super::*;
use crate::harness::{cpu, f64s, rand_vec, zeros};
use weft_kernels::*;

fn lib() -> &'static Shim {
    shim("attention", &[])
}

/// A rayon pool of just the calling thread, for the CPU backend's ops: under ThreadSanitizer
/// (`tsan`), rayon's own synchronization is invisible (Rust code is not instrumented), so work
/// handed to its worker threads would be reported as races with this thread's allocations.
fn this_thread() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build()
        .unwrap()
}

const U: f64 = 1.0 / (1u64 << 24) as f64;

#[allow(clippy::too_many_arguments)]
fn dims(
    b: usize,
    tq: usize,
    tk: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    causal: bool,
    q_start: usize,
    k_start: usize,
) -> AttnDims {
    AttnDims {
        tq,
        tk,
        q_start,
        k_start,
        ..AttnDims::new(b, tq, nh, nkv, hd, causal)
    }
}

/// The shapes every test runs, in both dtypes (HD = 20 in f32 only: the tensor-core kernels
/// take multiples of 16).
fn cases() -> Vec<AttnDims> {
    vec![
        dims(2, 37, 37, 4, 2, 32, true, 0, 0), // self-attention, T odd, 2 heads per kv head
        dims(1, 19, 70, 4, 1, 16, true, 51, 0), // TQ < TK: the last 19 queries of 70 (a ring chunk)
        dims(2, 70, 23, 2, 1, 64, false, 0, 0), // TQ > TK, full
        dims(1, 45, 29, 4, 2, 32, true, 0, 10), // keys start at 10: queries 0..9 see none
        dims(1, 20, 33, 2, 1, 128, true, 13, 0), // the largest head dim
        dims(1, 21, 40, 2, 1, 20, true, 19, 0), // HD not a multiple of 16 (f32)
    ]
}

fn suffix(dt: DType) -> &'static str {
    if dt == DType::BF16 {
        "bf16"
    } else {
        "f32"
    }
}

fn host(x: &[f64], dt: DType) -> HostVec {
    match dt {
        DType::F32 => x.iter().map(|&v| v as f32).collect::<Vec<_>>().into(),
        DType::BF16 => bf16s(x).into(),
        _ => unreachable!(),
    }
}

/// A buffer every element of which a kernel must overwrite.
fn garbage(dt: DType, n: usize) -> HostVec {
    host(&vec![-3.0e4; n], dt)
}

fn sizes(d: &AttnDims) -> Vec<Arg> {
    let mut v: Vec<Arg> = [
        d.b,
        d.tq,
        d.tk,
        d.nh,
        d.nkv,
        d.hd,
        d.causal as usize,
        d.q_start,
        d.k_start,
    ]
    .iter()
    .map(|&x| Arg::U64(x as u64))
    .collect();
    v.push(Arg::F32(d.scale as f32));
    v
}

fn grid(x: usize, y: usize, z: usize) -> Dim3 {
    Dim3 {
        x: x as u32,
        y: y as u32,
        z: z as u32,
    }
}

/// f32 kernels' row strides: HD rounded up to 4 and to 32.
fn strides(hd: usize) -> (usize, usize) {
    (hd.div_ceil(4) * 4, hd.div_ceil(32) * 32)
}

/// The launches of kernels/cuda/attention.cu, as its comments state them.
struct Launch {
    d: AttnDims,
    dt: DType,
}

impl Launch {
    fn forward(
        &self,
        out: &mut HostVec,
        lse: &mut HostVec,
        q: &mut HostVec,
        k: &mut HostVec,
        v: &mut HostVec,
    ) {
        let d = &self.d;
        let (g, shmem) = if self.dt == DType::BF16 {
            (grid(d.tq.div_ceil(64), d.nh, d.b), 4 * 64 * (d.hd + 8))
        } else {
            let (hdp, hds) = strides(d.hd);
            (grid(d.tq.div_ceil(32), d.nh, d.b), 4 * 32 * (2 * hdp + hds))
        };
        let mut args = vec![buf(out), buf(lse), buf(q), buf(k), buf(v)];
        args.extend(sizes(d));
        lib().launch(
            &format!("attention_forward_{}", suffix(self.dt)),
            g,
            dim(128),
            shmem,
            &args,
        );
    }

    /// delta, then dk/dv, then dq; returns delta.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        dq: &mut HostVec,
        dk: &mut HostVec,
        dv: &mut HostVec,
        dout: &mut HostVec,
        q: &mut HostVec,
        k: &mut HostVec,
        v: &mut HostVec,
        out: &mut HostVec,
        lse: &mut HostVec,
    ) -> HostVec {
        let (d, sfx) = (&self.d, suffix(self.dt));
        let rows = d.b * d.nh * d.tq;
        let mut delta = garbage(DType::F32, rows);
        let args = [
            buf(&mut delta),
            buf(dout),
            buf(out),
            Arg::U64(d.b as u64),
            Arg::U64(d.tq as u64),
            Arg::U64(d.nh as u64),
            Arg::U64(d.hd as u64),
        ];
        lib().launch(
            &format!("attention_backward_delta_{sfx}"),
            dim(rows.div_ceil(8) as u32),
            dim(256),
            0,
            &args,
        );

        let (gk, sk, gq, sq) = if self.dt == DType::BF16 {
            (
                grid(d.tk.div_ceil(64), d.nkv, d.b),
                2 * 160 * (d.hd + 8) + 128,
                grid(d.tq.div_ceil(64), d.nh, d.b),
                2 * 64 * (d.hd + 8),
            )
        } else {
            let (hdp, hds) = strides(d.hd);
            (
                grid(d.tk.div_ceil(8), d.nkv, d.b),
                4 * (16 * hdp + 64 * hds + 512),
                grid(d.tq.div_ceil(16), d.nh, d.b),
                4 * (32 * hdp + 64 * hds),
            )
        };
        let mut args = vec![
            buf(dk),
            buf(dv),
            buf(dout),
            buf(q),
            buf(k),
            buf(v),
            buf(lse),
            buf(&mut delta),
        ];
        args.extend(sizes(d));
        lib().launch(&format!("attention_backward_dkdv_{sfx}"), gk, dim(128), sk, &args);
        let mut args = vec![
            buf(dq),
            buf(dout),
            buf(q),
            buf(k),
            buf(v),
            buf(lse),
            buf(&mut delta),
        ];
        args.extend(sizes(d));
        lib().launch(&format!("attention_backward_dq_{sfx}"), gq, dim(128), sq, &args);
        delta
    }
}

/// Magnitudes (see the module doc) computed in f64 from the definition.
struct Magnitudes {
    sigma: f64,
    out: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    /// rowsum(dout ∘ out) and Σ|dout ∘ out|, laid out like lse.
    delta: Vec<f64>,
    delta_abs: Vec<f64>,
}

fn magnitudes(q: &[f64], k: &[f64], v: &[f64], dout: &[f64], out: &[f64], d: &AttnDims) -> Magnitudes {
    let hd = d.hd;
    let qi = |b: usize, t: usize, h: usize| ((b * d.tq + t) * d.nh + h) * hd;
    let ki = |b: usize, t: usize, h: usize| ((b * d.tk + t) * d.nkv + h) * hd;
    let nq = d.b * d.tq * d.nh * hd;
    let nk = d.b * d.tk * d.nkv * hd;
    let mut m = Magnitudes {
        sigma: 0.0,
        out: vec![0.0; nq],
        dq: vec![0.0; nq],
        dk: vec![0.0; nk],
        dv: vec![0.0; nk],
        delta: vec![0.0; d.b * d.nh * d.tq],
        delta_abs: vec![0.0; d.b * d.nh * d.tq],
    };
    let dotf = |x: &[f64], y: &[f64], f: fn(f64) -> f64| x.iter().zip(y).map(|(a, b)| f(a * b)).sum::<f64>();
    for b in 0..d.b {
        for h in 0..d.nh {
            let kvh = h / (d.nh / d.nkv);
            for i in 0..d.tq {
                let (qo, li) = (qi(b, i, h), (b * d.nh + h) * d.tq + i);
                let (qr, dor, orow) = (&q[qo..qo + hd], &dout[qo..qo + hd], &out[qo..qo + hd]);
                m.delta[li] = dotf(dor, orow, |x| x);
                m.delta_abs[li] = dotf(dor, orow, f64::abs);
                let seen: Vec<usize> = (0..d.tk)
                    .filter(|&j| !d.causal || d.k_start + j <= d.q_start + i)
                    .collect();
                let s: Vec<f64> = seen
                    .iter()
                    .map(|&j| d.scale * dotf(qr, &k[ki(b, j, kvh)..ki(b, j, kvh) + hd], |x| x))
                    .collect();
                let mx = s.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
                let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                for (&j, &sj) in seen.iter().zip(&s) {
                    let ko = ki(b, j, kvh);
                    let (kr, vr) = (&k[ko..ko + hd], &v[ko..ko + hd]);
                    m.sigma = m.sigma.max(d.scale * dotf(qr, kr, f64::abs));
                    let p = (sj - mx).exp() / z;
                    let w = p * (dotf(dor, vr, f64::abs) + m.delta_abs[li]);
                    for x in 0..hd {
                        m.out[qo + x] += p * vr[x].abs();
                        m.dv[ko + x] += p * dor[x].abs();
                        m.dq[qo + x] += 2.0 * d.scale * w * kr[x].abs();
                        m.dk[ko + x] += 2.0 * d.scale * w * qr[x].abs();
                    }
                }
            }
        }
    }
    m
}

/// `K` of the f32 bound (module doc).
fn k_f32(d: &AttnDims, sigma: f64) -> f64 {
    let n = d.tk.max(d.tq * d.nh / d.nkv) as f64;
    2.0 * d.hd as f64 * (sigma + 1.0) + 2.0 * n + 16.0
}

/// The distance between adjacent bf16 values at |x|.
fn ulp_bf16(x: f64) -> f64 {
    if x == 0.0 {
        return 0.0;
    }
    2f64.powi(x.abs().log2().floor() as i32 - 7)
}

/// Fails unless every element is within its bound; returns the largest error and its ratio to
/// the bound.
fn check(what: &str, got: &HostVec, want: &HostVec, bound: impl Fn(usize, f64) -> f64) -> (f64, f64) {
    let (g, w) = (f64s(got), f64s(want));
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    let (mut worst, mut ratio) = (0.0f64, 0.0f64);
    for i in 0..g.len() {
        if w[i].is_infinite() || g[i].is_infinite() {
            assert_eq!(
                g[i], w[i],
                "{what}: element {i}: emulated kernel {}, CPU {}",
                g[i], w[i]
            );
            continue;
        }
        let (err, b) = ((g[i] - w[i]).abs(), bound(i, w[i]));
        assert!(
            err <= b,
            "{what}: element {i} of {}: emulated kernel {}, CPU {} (error {err:e}, bound {b:e})",
            g.len(),
            g[i],
            w[i]
        );
        worst = worst.max(err);
        if b > 0.0 {
            ratio = ratio.max(err / b);
        }
    }
    (worst, ratio)
}

/// The bound for an element of magnitude `a` (module doc).
fn bound(dt: DType, kf: f64, a: f64, want: f64) -> f64 {
    if dt == DType::BF16 {
        a / 256.0 + ulp_bf16(want)
    } else {
        kf * U * a
    }
}

fn inputs(d: &AttnDims, seed: u64) -> [Vec<f64>; 4] {
    let nq = d.b * d.tq * d.nh * d.hd;
    let nk = d.b * d.tk * d.nkv * d.hd;
    let two = |v: Vec<f64>| v.iter().map(|x| 2.0 * x).collect::<Vec<_>>();
    [
        two(rand_vec(seed, nq)),
        two(rand_vec(seed + 1, nk)),
        rand_vec(seed + 2, nk),
        rand_vec(seed + 3, nq),
    ]
}

fn report(what: &str, (err, ratio): (f64, f64)) {
    eprintln!(
        "{what:<58} largest error {err:.3e}, {:.1}% of its bound",
        100.0 * ratio
    );
}

#[test]
fn forward_and_backward_match_the_cpu() {
    let (c, pool) = (cpu(), this_thread());
    for dt in [DType::F32, DType::BF16] {
        for (n, d) in cases().into_iter().enumerate() {
            if dt == DType::BF16 && d.hd % 16 != 0 {
                continue;
            }
            let name = format!(
                "{} b={} tq={} tk={} nh={} nkv={} hd={} causal={} q_start={} k_start={}",
                suffix(dt),
                d.b,
                d.tq,
                d.tk,
                d.nh,
                d.nkv,
                d.hd,
                d.causal,
                d.q_start,
                d.k_start
            );
            let x = inputs(&d, 10 * n as u64 + 1);
            let [mut q, mut k, mut v, mut dout] =
                [host(&x[0], dt), host(&x[1], dt), host(&x[2], dt), host(&x[3], dt)];
            let (nq, nk, nl) = (q.len(), k.len(), d.b * d.nh * d.tq);
            let st = if dt == DType::BF16 { DType::F32 } else { dt };
            let run = Launch { d, dt };

            // Forward.
            let (mut out, mut lse) = (zeros(dt, nq), zeros(st, nl));
            pool.install(|| {
                c.attention_forward(out.view_mut(), lse.view_mut(), q.view(), k.view(), v.view(), d)
            })
            .unwrap();
            let (mut gout, mut glse) = (garbage(dt, nq), garbage(st, nl));
            run.forward(&mut gout, &mut glse, &mut q, &mut k, &mut v);
            let (fq, fk, fv, fd, fo) = (f64s(&q), f64s(&k), f64s(&v), f64s(&dout), f64s(&out));
            let mag = magnitudes(&fq, &fk, &fv, &fd, &fo, &d);
            let kf = k_f32(&d, mag.sigma);
            report(
                &format!("{name}: out"),
                check(&format!("{name}: out"), &gout, &out, |i, w| {
                    bound(dt, kf, mag.out[i], w)
                }),
            );
            report(
                &format!("{name}: lse"),
                check(&format!("{name}: lse"), &glse, &lse, |_, w| {
                    kf * U * (1.0 + w.abs())
                }),
            );

            // Backward from the CPU's out and lse, so only the backward kernels are measured.
            let (mut dq, mut dk, mut dv) = (zeros(dt, nq), zeros(dt, nk), zeros(dt, nk));
            pool.install(|| {
                c.attention_backward(
                    dq.view_mut(),
                    dk.view_mut(),
                    dv.view_mut(),
                    dout.view(),
                    q.view(),
                    k.view(),
                    v.view(),
                    out.view(),
                    lse.view(),
                    d,
                )
            })
            .unwrap();
            let (mut gdq, mut gdk, mut gdv) = (garbage(dt, nq), garbage(dt, nk), garbage(dt, nk));
            let delta = run.backward(
                &mut gdq, &mut gdk, &mut gdv, &mut dout, &mut q, &mut k, &mut v, &mut out, &mut lse,
            );
            let want_delta = HostVec::from(mag.delta.iter().map(|&x| x as f32).collect::<Vec<_>>());
            report(
                &format!("{name}: delta"),
                check(&format!("{name}: delta"), &delta, &want_delta, |i, _| {
                    (2.0 * d.hd as f64 + 2.0) * U * mag.delta_abs[i]
                }),
            );
            report(
                &format!("{name}: dq"),
                check(&format!("{name}: dq"), &gdq, &dq, |i, w| {
                    bound(dt, kf, mag.dq[i], w)
                }),
            );
            report(
                &format!("{name}: dk"),
                check(&format!("{name}: dk"), &gdk, &dk, |i, w| {
                    bound(dt, kf, mag.dk[i], w)
                }),
            );
            report(
                &format!("{name}: dv"),
                check(&format!("{name}: dv"), &gdv, &dv, |i, w| {
                    bound(dt, kf, mag.dv[i], w)
                }),
            );
        }
    }
}

/// Rows that see no key come out exactly: out = 0 and lse = −∞ (queries 0..9 of a chunk whose
/// keys start at 10), and their dq is exactly 0.
#[test]
fn rows_that_see_no_key_are_zero_with_lse_minus_infinity() {
    for dt in [DType::F32, DType::BF16] {
        let d = dims(1, 12, 20, 2, 1, 32, true, 0, 10);
        let x = inputs(&d, 99);
        let [mut q, mut k, mut v, mut dout] =
            [host(&x[0], dt), host(&x[1], dt), host(&x[2], dt), host(&x[3], dt)];
        let st = if dt == DType::BF16 { DType::F32 } else { dt };
        let run = Launch { d, dt };
        let (mut out, mut lse) = (garbage(dt, q.len()), garbage(st, 24));
        run.forward(&mut out, &mut lse, &mut q, &mut k, &mut v);
        let (fo, fl) = (f64s(&out), f64s(&lse));
        for h in 0..2 {
            for i in 0..12 {
                let row = &fo[(i * 2 + h) * 32..(i * 2 + h + 1) * 32];
                if i < 10 {
                    assert_eq!(fl[h * 12 + i], f64::NEG_INFINITY, "{dt} lse of row {i}, head {h}");
                    assert!(
                        row.iter().all(|&o| o == 0.0),
                        "{dt} out of row {i}, head {h}: {row:?}"
                    );
                } else {
                    assert!(
                        fl[h * 12 + i].is_finite() && row.iter().any(|&o| o != 0.0),
                        "{dt} row {i}, head {h}"
                    );
                }
            }
        }
        let (mut dq, mut dk, mut dv) = (garbage(dt, q.len()), garbage(dt, k.len()), garbage(dt, k.len()));
        run.backward(
            &mut dq, &mut dk, &mut dv, &mut dout, &mut q, &mut k, &mut v, &mut out, &mut lse,
        );
        let fdq = f64s(&dq);
        assert!(
            fdq[..10 * 2 * 32].iter().all(|&g| g == 0.0),
            "{dt}: dq of the rows that see no key"
        );
        assert!(
            fdq[10 * 2 * 32..].iter().any(|&g| g != 0.0),
            "{dt}: dq of the rows that see keys"
        );
    }
}

#[test]
fn merge_matches_the_cpu_with_infinite_lse() {
    let (c, pool) = (cpu(), this_thread());
    for dt in [DType::F32, DType::BF16] {
        for (b, tq, nh, hd) in [(2, 13, 3, 40), (1, 5, 2, 128), (2, 7, 4, 16)] {
            let d = dims(b, tq, tq, nh, nh, hd, false, 0, 0);
            let (nq, nl) = (b * tq * nh * hd, b * nh * tq);
            let st = if dt == DType::BF16 { DType::F32 } else { dt };
            let lses = |seed: u64, every: usize| -> HostVec {
                let x: Vec<f64> = rand_vec(seed, nl)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if i % every == 0 {
                            f64::NEG_INFINITY
                        } else {
                            3.0 * v
                        }
                    })
                    .collect();
                host(&x, st)
            };
            // Running rows with lse = -inf hold out = 0, as a forward leaves them.
            let (l0, pl) = (lses(1, 5), lses(2, 7));
            let mut o0 = rand_vec(3, nq);
            let fl0 = f64s(&l0);
            for (r, chunk) in o0.chunks_mut(hd).enumerate() {
                let (t, h) = ((r / nh) % tq, r % nh);
                if fl0[((r / (nh * tq)) * nh + h) * tq + t] == f64::NEG_INFINITY {
                    chunk.fill(0.0);
                }
            }
            let mut part = host(&rand_vec(4, nq), dt);
            let mut plse = pl;
            let (mut out, mut lse) = (host(&o0, dt), l0.clone());
            pool.install(|| c.attention_merge(out.view_mut(), lse.view_mut(), part.view(), plse.view(), d))
                .unwrap();
            let (mut gout, mut glse) = (host(&o0, dt), l0);
            let args = [
                buf(&mut gout),
                buf(&mut glse),
                buf(&mut part),
                buf(&mut plse),
                Arg::U64(b as u64),
                Arg::U64(tq as u64),
                Arg::U64(nh as u64),
                Arg::U64(hd as u64),
            ];
            let rows = b * tq * nh;
            lib().launch(
                &format!("attention_merge_{}", suffix(dt)),
                dim(rows.div_ceil(8) as u32),
                dim(256),
                0,
                &args,
            );
            let what = format!("attention_merge_{} ({b}, {tq}, {nh}, {hd})", suffix(dt));
            assert_close(
                &format!("{what}: out"),
                &gout,
                &out,
                if dt == DType::BF16 { 1 } else { 2 },
            );
            assert_close(&format!("{what}: lse"), &glse, &lse, 2);
            assert!(
                f64s(&glse).iter().any(|x| x.is_infinite()),
                "{what}: a row with both log-sum-exps at -inf"
            );
        }
    }
}
