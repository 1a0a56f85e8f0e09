//! The communicators ranks train through, collective by collective: the shared-device one over
//! two thread ranks on the device under test, and, on CUDA, NCCL as a one-rank communicator.
//! Every collective, blocking and started in the background, in f32 and bf16, against its exact
//! result (small integers, so every sum is exact in bf16 too).

use serde::Serialize;
use weft_kernels::{DType, HostVec, Ops, Slice};
use weft_parallel::comm::shared::{self, SharedComm};
use weft_parallel::{Collective, Comm};

/// One collective of one communicator in one dtype.
#[derive(Clone, Debug, Serialize)]
pub struct CommRow {
    pub transport: String,
    pub ranks: usize,
    pub collective: &'static str,
    pub dtype: &'static str,
    pub pass: bool,
    /// Why it failed or could not run.
    pub error: Option<String>,
}

const N: usize = 1000;

fn value(rank: usize, i: usize) -> f64 {
    ((rank + 1) * (i % 5 + 1)) as f64
}

/// What rank `rank` of `size` must hold after `collective` (its inputs are `value(rank, ·)`).
fn expected(collective: &str, rank: usize, size: usize) -> Vec<f64> {
    match collective {
        "all_gather" => (0..size * N).map(|j| value(j / N, j % N)).collect(),
        "reduce_scatter" => (0..N)
            .map(|i| (0..size).map(|r| value(r, rank * N + i)).sum())
            .collect(),
        "all_reduce" => (0..N).map(|i| (0..size).map(|r| value(r, i)).sum()).collect(),
        "all_to_all" => (0..size * N).map(|j| value(j / N, rank * N + j % N)).collect(),
        "broadcast" => (0..N).map(|i| value(size - 1, i)).collect(),
        _ => (0..N).map(|i| value((rank + size - 1) % size, i)).collect(), // shift
    }
}

/// `(collective, background?)`: every check, in order.
const CHECKS: [(&str, Option<Collective>); 10] = [
    ("all_gather", None),
    ("reduce_scatter", None),
    ("all_reduce", None),
    ("all_to_all", None),
    ("broadcast", None),
    ("shift", None),
    ("all_gather", Some(Collective::AllGather)),
    ("reduce_scatter", Some(Collective::ReduceScatter)),
    ("all_reduce", Some(Collective::AllReduce)),
    ("shift", Some(Collective::Shift)),
];

fn name(check: &(&'static str, Option<Collective>)) -> &'static str {
    match check {
        ("all_gather", Some(_)) => "all_gather (background)",
        ("reduce_scatter", Some(_)) => "reduce_scatter (background)",
        ("all_reduce", Some(_)) => "all_reduce (background)",
        ("shift", Some(_)) => "shift (background)",
        (c, _) => c,
    }
}

fn upload<B: Ops>(be: &B, dt: DType, v: &[f64]) -> anyhow::Result<B::Buffer> {
    let mut b = be.alloc(dt, v.len())?;
    let mut wide = be.alloc(DType::F32, v.len())?;
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    be.upload(HostVec::from(f).view(), B::view_mut(&mut wide))?;
    be.cast(B::view_mut(&mut b), B::view(&wide), v.len())?;
    Ok(b)
}

fn download<B: Ops>(be: &B, b: &B::Buffer) -> anyhow::Result<Vec<f64>> {
    let v = B::view(b);
    let mut wide = be.alloc(DType::F32, v.len())?;
    be.cast(B::view_mut(&mut wide), v, v.len())?;
    let mut h = HostVec::zeros(DType::F32, v.len());
    be.download(B::view(&wide), h.view_mut())?;
    let HostVec::F32(h) = h else {
        unreachable!("an f32 buffer")
    };
    Ok(h.into_iter().map(f64::from).collect())
}

/// Run one check on this rank: `Ok(true)` when its result is exact.
fn check<B: Ops>(be: &B, c: &dyn Comm<B>, dt: DType, k: &(&str, Option<Collective>)) -> anyhow::Result<bool> {
    let (rank, size) = (c.rank(), c.size());
    let (op, background) = *k;
    let inputs: Vec<f64> = match op {
        "reduce_scatter" | "all_to_all" => (0..size * N).map(|i| value(rank, i)).collect(),
        _ => (0..N).map(|i| value(rank, i)).collect(),
    };
    let out_len = match op {
        "all_gather" | "all_to_all" => size * N,
        _ => N,
    };
    let send = upload(be, dt, &inputs)?;
    let got = match background {
        Some(coll) => {
            let recv = be.alloc(dt, out_len)?;
            download(be, &c.start(be, coll, send, recv)?.wait()?.1)?
        }
        None => {
            let mut recv = be.alloc(dt, out_len)?;
            match op {
                "all_gather" => c.all_gather(be, B::view(&send), B::view_mut(&mut recv))?,
                "reduce_scatter" => c.reduce_scatter(be, B::view(&send), B::view_mut(&mut recv))?,
                "all_to_all" => c.all_to_all(be, B::view(&send), B::view_mut(&mut recv))?,
                "all_reduce" | "broadcast" => {
                    recv = send;
                    if op == "all_reduce" {
                        c.all_reduce(be, B::view_mut(&mut recv))?
                    } else {
                        c.broadcast(be, B::view_mut(&mut recv), size - 1)?
                    }
                }
                _ => c.send_recv(
                    be,
                    B::view(&send),
                    (rank + 1) % size,
                    B::view_mut(&mut recv),
                    (rank + size - 1) % size,
                )?,
            }
            download(be, &recv)?
        }
    };
    Ok(got == expected(op, rank, size))
}

/// Every check on every rank of `c`; a rank's rows in check order.
fn all_checks<B: Ops>(be: &B, c: &dyn Comm<B>) -> Vec<(bool, Option<String>)> {
    let mut out = vec![];
    for dt in [DType::F32, DType::BF16] {
        for k in &CHECKS {
            out.push(match check(be, c, dt, k) {
                Ok(ok) => (ok, (!ok).then(|| "wrong result".to_string())),
                Err(e) => (false, Some(format!("{e:#}"))),
            });
        }
    }
    out
}

fn rows(transport: &str, ranks: usize, per_rank: &[Vec<(bool, Option<String>)>]) -> Vec<CommRow> {
    let mut rows = vec![];
    let mut i = 0;
    for dt in [DType::F32, DType::BF16] {
        for k in &CHECKS {
            let results: Vec<&(bool, Option<String>)> = per_rank.iter().filter_map(|r| r.get(i)).collect();
            let pass = results.len() == ranks && results.iter().all(|r| r.0);
            let error = results.iter().find_map(|r| r.1.clone());
            rows.push(CommRow {
                transport: transport.into(),
                ranks,
                collective: name(k),
                dtype: dt.name(),
                pass,
                error,
            });
            i += 1;
        }
    }
    rows
}

/// Two thread ranks on the device `make` opens, through the shared-device communicator.
pub fn shared_device<B: Ops>(make: impl Fn() -> anyhow::Result<B> + Sync) -> Vec<CommRow> {
    let ranks = 2;
    let r = shared::run(ranks, |_, _, data: SharedComm<B>| -> anyhow::Result<_> {
        let be = make()?;
        Ok(all_checks(&be, &data))
    });
    match r {
        Ok(per_rank) => rows("shared-device", ranks, &per_rank),
        Err(e) => failed("shared-device", ranks, &format!("{e:#}")),
    }
}

/// Every row of a communicator that could not be made.
pub fn failed(transport: &str, ranks: usize, why: &str) -> Vec<CommRow> {
    let per_rank = vec![vec![(false, Some(why.to_string())); 2 * CHECKS.len()]; ranks];
    rows(transport, ranks, &per_rank)
}

/// NCCL as a one-rank communicator on CUDA device `device`.
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
pub fn nccl(device: usize) -> Vec<CommRow> {
    use weft_kernels::cuda::CudaBackend;
    use weft_parallel::comm::{local, nccl::NcclComm};
    let r = local::run(1, |_, host| -> anyhow::Result<_> {
        let be = CudaBackend::new(device)?;
        let c = NcclComm::world(&be, host)?;
        Ok(all_checks(&be, &c))
    });
    match r {
        Ok(per_rank) => rows("nccl", 1, &per_rank),
        Err(e) => failed("nccl", 1, &format!("{e:#}")),
    }
}
