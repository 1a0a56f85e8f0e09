//! The shared-device communicator (thread ranks on one device) on the CPU backend: every
//! collective, in f32, f64 and bf16, gives the bits of the host communicator over the same
//! threads; sub-groups, point to point, background collectives, and a disagreement that is an
//! error for every rank rather than a hang.

use weft_kernels::{bf16, Backend, CpuBackend, DType, HostVec};
use weft_parallel::comm::{local, shared, shared::SharedComm};
use weft_parallel::{Collective, Comm, Error, HostComm};

/// Rank `rank`'s `n` values of `dtype`, distinct per rank and element, with signed zeros and
/// values whose sum order matters.
fn values(rank: usize, n: usize, dtype: DType) -> HostVec {
    let x: Vec<f64> = (0..n)
        .map(|i| {
            let k = (rank * 7919 + i * 104729) % 1009;
            match k % 13 {
                0 => -0.0,
                1 => 1e8,
                2 => -1e8,
                _ => (k as f64 - 500.0) / 37.0 + 1e-7 * rank as f64,
            }
        })
        .collect();
    match dtype {
        DType::F64 => HostVec::F64(x),
        DType::F32 => HostVec::F32(x.iter().map(|&v| v as f32).collect()),
        DType::BF16 => HostVec::BF16(x.iter().map(|&v| bf16::from_f64(v)).collect()),
        _ => unreachable!(),
    }
}

fn bits(v: &HostVec) -> Vec<u64> {
    match v {
        HostVec::F64(x) => x.iter().map(|v| v.to_bits()).collect(),
        HostVec::F32(x) => x.iter().map(|v| v.to_bits() as u64).collect(),
        HostVec::BF16(x) => x.iter().map(|v| v.to_bits() as u64).collect(),
        _ => unreachable!(),
    }
}

/// Every collective's outputs on one rank, through `c`.
fn outputs(c: &dyn Comm<CpuBackend>, rank: usize, dtype: DType) -> Result<Vec<Vec<u64>>, Error> {
    let be = CpuBackend::new();
    let size = c.size();
    let n = 5;
    let mut out = vec![];
    let send = values(rank, n * size, dtype);
    let mut recv = be.alloc(dtype, n * size * size)?;
    c.all_gather(&be, send.view(), recv.view_mut())?;
    out.push(bits(&recv));
    let mut recv = be.alloc(dtype, n)?;
    c.reduce_scatter(&be, send.view(), recv.view_mut())?;
    out.push(bits(&recv));
    // An odd length, so the host's all-reduce pads its blocks.
    let mut buf = values(rank + 3, 2 * size + 1, dtype);
    c.all_reduce(&be, buf.view_mut())?;
    out.push(bits(&buf));
    let mut recv = be.alloc(dtype, n * size)?;
    c.all_to_all(&be, send.view(), recv.view_mut())?;
    out.push(bits(&recv));
    let mut buf = values(rank, 7, dtype);
    c.broadcast(&be, buf.view_mut(), size - 1)?;
    out.push(bits(&buf));
    // One ring step, blocking and in the background.
    let mut recv = be.alloc(dtype, n)?;
    let s = values(rank + 9, n, dtype);
    c.send_recv(
        &be,
        s.view(),
        (rank + 1) % size,
        recv.view_mut(),
        (rank + size - 1) % size,
    )?;
    out.push(bits(&recv));
    for op in [
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllReduce,
        Collective::Shift,
    ] {
        let (sn, rn) = match op {
            Collective::AllGather => (n, n * size),
            Collective::ReduceScatter => (n * size, n),
            _ => (n, n),
        };
        let pending = c.start(&be, op, values(rank + 11, sn, dtype), be.alloc(dtype, rn)?)?;
        out.push(bits(&pending.wait()?.1));
    }
    // Point to point along a chain: 0 → 1 → … → size−1.
    let mut got = values(rank, 3, dtype);
    if rank > 0 {
        c.recv(&be, got.view_mut(), rank - 1)?;
    }
    if rank + 1 < size {
        c.send(&be, got.view(), rank + 1)?;
    }
    out.push(bits(&got));
    // A sub-group: the odd and the even ranks.
    let sub = c.split(rank % 2, rank)?;
    let mut buf = values(rank + 5, 6, dtype);
    sub.all_reduce(&be, buf.view_mut())?;
    out.push(bits(&buf));
    Ok(out)
}

#[test]
fn every_collective_gives_the_host_communicators_bits() {
    for size in [1, 2, 3, 4] {
        for dtype in [DType::F32, DType::F64, DType::BF16] {
            let host = local::run(size, |rank, c: HostComm| outputs(&c, rank, dtype)).unwrap();
            let dev = shared::run(size, |rank, _, d: SharedComm<CpuBackend>| {
                outputs(&d, rank, dtype)
            })
            .unwrap();
            assert_eq!(host.len(), dev.len());
            for (rank, (h, d)) in host.iter().zip(&dev).enumerate() {
                for (k, (a, b)) in h.iter().zip(d).enumerate() {
                    assert_eq!(a, b, "size {size}, {dtype}, rank {rank}, output {k}");
                }
            }
            // The sums are real sums: rank 0's all-reduce differs from its input when there
            // are several ranks.
            if size > 1 {
                assert_ne!(dev[0][2], bits(&values(3, 2 * size + 1, dtype)));
            }
        }
    }
}

#[test]
fn ranks_that_disagree_get_an_error_not_a_hang() {
    let r = shared::run(3, |rank, _, d: SharedComm<CpuBackend>| -> Result<(), Error> {
        let be = CpuBackend::new();
        let mut buf = be.alloc(DType::F32, if rank == 1 { 4 } else { 3 })?;
        d.all_reduce(&be, CpuBackend::view_mut(&mut buf))
    });
    let e = r.unwrap_err().to_string();
    assert!(e.contains("disagree"), "{e}");
}
