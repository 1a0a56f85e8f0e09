//! Context-parallel attention and the sequence-parallel boundaries, on the thread transport,
//! against one process computing the whole sequence.

use weft_kernels::{AttentionOps, AttnDims, Backend, CpuBackend, HostVec};
use weft_parallel::comm::local;
use weft_parallel::cp::{self, CpGroup};
use weft_parallel::sp::{self, SeqDims};
use weft_parallel::{Comm, Error, HostComm, SeqSplit};

fn rand(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 20001) as f64 / 10000.0 - 1.0
        })
        .collect()
}

/// Rows `positions` of every sample of `x (B, T, row)`.
fn select(x: &[f64], b: usize, t: usize, row: usize, positions: &[usize]) -> Vec<f64> {
    let mut out = vec![];
    for s in 0..b {
        for &p in positions {
            out.extend_from_slice(&x[(s * t + p) * row..(s * t + p + 1) * row]);
        }
    }
    out
}

fn f64s(v: &HostVec) -> Vec<f64> {
    match v {
        HostVec::F64(v) => v.clone(),
        _ => unreachable!(),
    }
}

#[test]
fn ring_ulysses_and_hybrid_attention_equal_one_process() {
    let (b, t, nh, nkv, hd) = (2, 16, 4, 2, 3);
    let be = CpuBackend::new();
    let (q, k, v, dout) = (
        rand(1, b * t * nh * hd),
        rand(2, b * t * nkv * hd),
        rand(3, b * t * nkv * hd),
        rand(4, b * t * nh * hd),
    );
    for causal in [false, true] {
        let full = AttnDims::new(b, t, nh, nkv, hd, causal);
        let (mut out, mut lse) = (
            HostVec::from(vec![0f64; q.len()]),
            HostVec::from(vec![0f64; b * nh * t]),
        );
        be.attention_forward(
            out.view_mut(),
            lse.view_mut(),
            (&q).into(),
            (&k).into(),
            (&v).into(),
            full,
        )
        .unwrap();
        let mut g: Vec<HostVec> = [q.len(), k.len(), k.len()]
            .iter()
            .map(|&n| HostVec::from(vec![0f64; n]))
            .collect();
        let [gq, gk, gv] = &mut g[..] else { unreachable!() };
        be.attention_backward(
            gq.view_mut(),
            gk.view_mut(),
            gv.view_mut(),
            (&dout).into(),
            (&q).into(),
            (&k).into(),
            (&v).into(),
            out.view(),
            lse.view(),
            full,
        )
        .unwrap();
        let (want, want_g): (Vec<f64>, Vec<Vec<f64>>) = (f64s(&out), g.iter().map(f64s).collect());
        for (ring, ulysses) in [(2, 1), (4, 1), (1, 2), (2, 2)] {
            let split = SeqSplit {
                t,
                ring,
                ulysses,
                tp: 1,
                causal,
            };
            local::run(ring * ulysses, |rank, c: HostComm| -> Result<(), Error> {
                let (rr, ur) = (rank / ulysses, rank % ulysses);
                let ring_c = c.split(ur, rank)?;
                let uly_c = c.split(rr, rank)?;
                let grp = CpGroup {
                    ring: ring_c.as_ref(),
                    ulysses: uly_c.as_ref(),
                    split,
                };
                let pos = split.cp_positions(rr, ur);
                let tl = pos.len();
                let sel = |x: &[f64], h: usize| select(x, b, t, h * hd, &pos);
                let (ql, kl, vl, dl) = (sel(&q, nh), sel(&k, nkv), sel(&v, nkv), sel(&dout, nh));
                let d = AttnDims::new(b, tl, nh, nkv, hd, causal);
                let mut o = vec![0f64; ql.len()];
                let mut l = vec![0f64; b * nh * tl];
                cp::attention_forward(
                    &be,
                    &grp,
                    (&mut o).into(),
                    (&mut l).into(),
                    (&ql).into(),
                    (&kl).into(),
                    (&vl).into(),
                    d,
                )?;
                let case = format!("ring {ring} ulysses {ulysses} causal {causal} rank {rank}");
                let close = |got: &[f64], want: &[f64], what: &str| {
                    assert_eq!(got.len(), want.len());
                    for (i, (a, b)) in got.iter().zip(want).enumerate() {
                        assert!((a - b).abs() < 1e-12, "{case} {what}[{i}]: {a} vs {b}");
                    }
                };
                close(&o, &sel(&want, nh), "out");
                let (mut dq, mut dk, mut dv) =
                    (vec![0f64; ql.len()], vec![0f64; kl.len()], vec![0f64; kl.len()]);
                cp::attention_backward(
                    &be,
                    &grp,
                    (&mut dq).into(),
                    (&mut dk).into(),
                    (&mut dv).into(),
                    (&dl).into(),
                    (&ql).into(),
                    (&kl).into(),
                    (&vl).into(),
                    (&o).into(),
                    (&l).into(),
                    d,
                )?;
                close(&dq, &sel(&want_g[0], nh), "dq");
                close(&dk, &sel(&want_g[1], nkv), "dk");
                close(&dv, &sel(&want_g[2], nkv), "dv");
                Ok(())
            })
            .unwrap();
        }
    }
}

/// Σ_r ⟨A(x)_r, y_r⟩ = Σ_r ⟨x_r, A*(y)_r⟩ for a collective pair (A, A*), per rank.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sum_over_ranks(c: &dyn Comm<CpuBackend>, v: f64) -> f64 {
    let mut s = vec![v];
    c.all_reduce(&CpuBackend::new(), (&mut s).into()).unwrap();
    s[0]
}

#[test]
fn sequence_parallel_gather_and_scatter_are_adjoint_and_keep_token_order() {
    let (b, t, c) = (3, 8, 5);
    for tp in [1, 2, 4] {
        local::run(tp, |rank, comm: HostComm| -> Result<(), Error> {
            let be = CpuBackend::new();
            let d = SeqDims { b, t, c };
            let tl = t / tp;
            let x = rand(10 + rank as u64, b * tl * c);
            let y = rand(20 + rank as u64, b * t * c);
            let mut stage = vec![0f64; b * t * c];
            let mut gx = vec![0f64; b * t * c];
            sp::gather_seq(&be, &comm, (&x).into(), (&mut gx).into(), (&mut stage).into(), d)?;
            // Token j of sample s comes from rank j / tl.
            for s in 0..b {
                for j in 0..t {
                    let want = rand(10 + (j / tl) as u64, b * tl * c);
                    let src = (s * tl + j % tl) * c;
                    assert_eq!(&gx[(s * t + j) * c..(s * t + j + 1) * c], &want[src..src + c]);
                }
            }
            let mut sy = vec![0f64; b * tl * c];
            sp::scatter_seq(&be, &comm, (&y).into(), (&mut sy).into(), (&mut stage).into(), d)?;
            let (lhs, rhs) = (
                sum_over_ranks(&comm, dot(&gx, &y)),
                sum_over_ranks(&comm, dot(&x, &sy)),
            );
            assert!(
                (lhs - rhs).abs() < 1e-10 * lhs.abs().max(1.0),
                "tp {tp}: {lhs} vs {rhs}"
            );
            Ok(())
        })
        .unwrap();
    }
}

#[test]
fn ulysses_all_to_alls_are_inverse_and_adjoint() {
    let (b, t, h, hd) = (2, 3, 4, 2);
    for u in [1, 2, 4] {
        local::run(u, |rank, comm: HostComm| -> Result<(), Error> {
            let be = CpuBackend::new();
            let x = rand(30 + rank as u64, b * t * h * hd);
            let y = rand(40 + rank as u64, b * t * h * hd);
            let hx = cp::to_heads(&be, &comm, (&x).into(), b, t, h * hd)?;
            let mut back = vec![0f64; x.len()];
            cp::to_tokens(
                &be,
                &comm,
                CpuBackend::view(&hx),
                (&mut back).into(),
                b,
                t,
                h * hd,
            )?;
            assert_eq!(back, x, "to_tokens ∘ to_heads = id");
            // Head-sharded token u·t of head k (local) is rank (u·t / t)'s token, head rank·h/u + k.
            let hx = f64s(&hx);
            let hl = h / u;
            for s in 0..b {
                for j in 0..u * t {
                    let src = rand(30 + (j / t) as u64, b * t * h * hd);
                    for k in 0..hl {
                        let got = &hx[((s * u * t + j) * hl + k) * hd..][..hd];
                        let at = ((s * t + j % t) * h + rank * hl + k) * hd;
                        assert_eq!(got, &src[at..at + hd]);
                    }
                }
            }
            let mut ty = vec![0f64; y.len()];
            cp::to_tokens(&be, &comm, (&y).into(), (&mut ty).into(), b, t, h * hd)?;
            let (lhs, rhs) = (
                sum_over_ranks(&comm, dot(&hx, &y)),
                sum_over_ranks(&comm, dot(&x, &ty)),
            );
            assert!(
                (lhs - rhs).abs() < 1e-10 * lhs.abs().max(1.0),
                "u {u}: {lhs} vs {rhs}"
            );
            Ok(())
        })
        .unwrap();
    }
}
