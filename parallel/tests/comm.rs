//! Collectives on the thread transport, checked against direct computation.

use weft_kernels::{CpuBackend, HostVec};
use weft_parallel::comm::local;
use weft_parallel::{Collective, Comm, Dim, Error, HostComm, Mesh};

fn data(rank: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| (rank * 1000 + i) as f32 * 0.37 - 11.0).collect()
}

#[test]
fn collectives_match_their_definitions() {
    for size in [1, 2, 3, 4] {
        let n = 6;
        local::run(size, |rank, c: HostComm| -> Result<(), Error> {
            let be = CpuBackend::new();
            let mine = data(rank, n * size);
            // all_gather
            let mut g = vec![0f32; n * size];
            c.all_gather(&be, mine[..n].into(), (&mut g).into())?;
            for r in 0..size {
                assert_eq!(&g[r * n..(r + 1) * n], &data(r, n * size)[..n]);
            }
            // reduce_scatter: rank-ordered sum of each rank's block `rank`.
            let mut rs = vec![0f32; n];
            c.reduce_scatter(&be, (&mine).into(), (&mut rs).into())?;
            for (i, got) in rs.iter().enumerate() {
                let mut want = 0f32;
                for r in 0..size {
                    want += data(r, n * size)[rank * n + i];
                }
                assert_eq!(*got, want);
            }
            // all_reduce on a length that does not divide the group size.
            let mut ar = data(rank, 7);
            c.all_reduce(&be, (&mut ar).into())?;
            for (i, v) in ar.iter().enumerate() {
                let mut want = 0f32;
                for r in 0..size {
                    want += data(r, 7)[i];
                }
                assert_eq!(*v, want);
            }
            // all_to_all
            let mut a2a = vec![0f32; n * size];
            c.all_to_all(&be, (&mine).into(), (&mut a2a).into())?;
            for r in 0..size {
                assert_eq!(
                    &a2a[r * n..(r + 1) * n],
                    &data(r, n * size)[rank * n..(rank + 1) * n]
                );
            }
            // broadcast from the last rank
            let mut b = data(rank, 3);
            c.broadcast(&be, (&mut b).into(), size - 1)?;
            assert_eq!(b, data(size - 1, 3));
            // ring send_recv
            let mut got = vec![0f32; 4];
            c.send_recv(
                &be,
                mine[..4].into(),
                (rank + 1) % size,
                (&mut got).into(),
                (rank + size - 1) % size,
            )?;
            assert_eq!(got, data((rank + size - 1) % size, n * size)[..4].to_vec());
            Ok(())
        })
        .unwrap();
    }
}

/// ⟨all_gather(x), y⟩ = ⟨x, reduce_scatter(y)⟩ summed over ranks: the two are each other's
/// adjoint, which is why one is the backward of the other.
#[test]
fn all_gather_and_reduce_scatter_are_adjoint() {
    let (size, n) = (4, 5);
    let parts = local::run(size, |rank, c: HostComm| -> Result<(f64, f64), Error> {
        let be = CpuBackend::new();
        let x: Vec<f64> = (0..n).map(|i| ((rank * 7 + i) as f64).sin()).collect();
        let y: Vec<f64> = (0..n * size).map(|i| ((rank * 13 + i) as f64).cos()).collect();
        let mut gx = vec![0f64; n * size];
        c.all_gather(&be, (&x).into(), (&mut gx).into())?;
        let mut sy = vec![0f64; n];
        c.reduce_scatter(&be, (&y).into(), (&mut sy).into())?;
        let lhs = gx.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs = x.iter().zip(&sy).map(|(a, b)| a * b).sum();
        Ok((lhs, rhs))
    })
    .unwrap();
    let (l, r): (f64, f64) = parts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    assert!((l - r).abs() < 1e-12 * l.abs().max(1.0), "{l} vs {r}");
}

#[test]
fn background_collectives_and_mesh_groups() {
    let mesh = Mesh::new(1, 2, 1, 2);
    local::run(4, |rank, world: HostComm| -> Result<(), Error> {
        let be = CpuBackend::new();
        let tp = world.split(mesh.color(rank, &[Dim::Tp]), rank)?;
        let shard = world.split(mesh.color(rank, &[Dim::Shard]), rank)?;
        assert_eq!(tp.size(), 2);
        assert_eq!(tp.rank(), mesh.index_in(rank, &[Dim::Tp]));
        // Two background gathers in flight on the shard group while the tp group reduces.
        let p1 = shard.start(
            &be,
            Collective::AllGather,
            HostVec::from(vec![rank as f32; 3]),
            HostVec::zeros(weft_kernels::DType::F32, 6),
        )?;
        let p2 = shard.start(
            &be,
            Collective::AllReduce,
            HostVec::from(vec![1.0f32 + rank as f32]),
            HostVec::zeros(weft_kernels::DType::F32, 1),
        )?;
        let mut t = vec![rank as f32];
        tp.all_reduce(&be, (&mut t).into())?;
        let members = mesh.group(rank, &[Dim::Tp]);
        assert_eq!(t[0], members.iter().sum::<usize>() as f32);
        let (_, g) = p1.wait()?;
        let sm = mesh.group(rank, &[Dim::Shard]);
        let want: Vec<f32> = sm.iter().flat_map(|&r| vec![r as f32; 3]).collect();
        assert_eq!(g, HostVec::from(want));
        let (_, s) = p2.wait()?;
        assert_eq!(
            s,
            HostVec::from(vec![sm.iter().map(|&r| 1.0 + r as f32).sum::<f32>()])
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_failing_rank_stops_the_others_with_its_own_error() {
    let r = local::run(3, |rank, c: HostComm| -> Result<(), Error> {
        if rank == 1 {
            return Err(Error::Comm("rank 1 ran out of data".into()));
        }
        let mut v = vec![0f32; 3];
        c.all_reduce(&CpuBackend::new(), (&mut v).into())
    });
    assert!(r.unwrap_err().to_string().contains("rank 1 ran out of data"));
}

#[test]
fn a_background_shift_passes_blocks_round_the_ring() {
    for size in [1, 2, 3] {
        local::run(size, |rank, c: HostComm| -> Result<(), Error> {
            let be = CpuBackend::new();
            let mut block = HostVec::from(vec![rank as f32; 2]);
            // `size` shifts bring every block back home, visiting each rank once.
            for step in 1..=size {
                let p = c.start(
                    &be,
                    Collective::Shift,
                    block,
                    HostVec::zeros(weft_kernels::DType::F32, 2),
                )?;
                let (_, got) = p.wait()?;
                let from = ((rank + size * step - step) % size) as f32;
                assert_eq!(got, HostVec::from(vec![from; 2]), "size {size} step {step}");
                block = got;
            }
            Ok(())
        })
        .unwrap();
    }
}
