//! The CUDA backend: a clear error where CUDA cannot run, and GPU-vs-CPU comparisons where it
//! can. The comparisons need an NVIDIA GPU and are `#[ignore]`d so a CPU machine reports them
//! as skipped; run them on a GPU machine with
//! `cargo test -p weft-kernels --features cuda -- --ignored gpu_`.

use weft_kernels::cuda::{CudaBackend, COMPILED};
use weft_kernels::Error;

#[test]
fn cuda_is_a_clear_error_not_a_panic_without_a_gpu() {
    match CudaBackend::new(0) {
        Ok(_) => eprintln!("a CUDA device is present; the gpu_ tests apply"),
        Err(Error::CudaNotCompiled) if !COMPILED => {}
        Err(e @ Error::CudaUnavailable(_)) if COMPILED => {
            let m = e.to_string();
            assert!(m.starts_with("CUDA is not available on this machine: "), "{m}");
            eprintln!("{m}");
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
mod gpu {
    use crate::harness::*;
    use weft_kernels::cuda::{CudaBackend, CudaMut};
    use weft_kernels::gradcheck::{compare, Tolerance};
    use weft_kernels::*;

    fn dev() -> CudaBackend {
        CudaBackend::new(0).expect("these tests need a CUDA GPU")
    }

    fn to_dev(g: &CudaBackend, x: &HostVec) -> <CudaBackend as Backend>::Buffer {
        let mut b = g.alloc(x.dtype(), x.len()).unwrap();
        g.upload(x.view(), CudaBackend::view_mut(&mut b)).unwrap();
        b
    }

    fn to_host(g: &CudaBackend, b: &<CudaBackend as Backend>::Buffer, dt: DType, n: usize) -> HostVec {
        let mut h = zeros(dt, n);
        g.download(CudaBackend::view(b), h.view_mut()).unwrap();
        h
    }

    /// Matmul forward and backward (all transposes, with bias) on the GPU against the CPU.
    fn matmul_case(dt: DType, d: MatmulDims) {
        let (g, c) = (dev(), cpu());
        let odt = DType::F32; // 16-bit inputs produce f32 outputs (and take an f32 bias)
        let a = host(&rand_vec(1, d.batch * d.m * d.k), dt);
        let b = host(&rand_vec(2, d.batch * d.k * d.n), dt);
        let bias = host(&rand_vec(3, d.n), odt);
        let dout = host(&rand_vec(4, d.batch * d.m * d.n), odt);
        let mut out = zeros(odt, d.batch * d.m * d.n);
        c.matmul_forward(out.view_mut(), a.view(), b.view(), Some(bias.view()), d)
            .unwrap();
        let (ga, gb, gbias, gdout) = (
            to_dev(&g, &a),
            to_dev(&g, &b),
            to_dev(&g, &bias),
            to_dev(&g, &dout),
        );
        let mut gout = g.alloc(odt, out.len()).unwrap();
        g.matmul_forward(
            CudaBackend::view_mut(&mut gout),
            CudaBackend::view(&ga),
            CudaBackend::view(&gb),
            Some(CudaBackend::view(&gbias)),
            d,
        )
        .unwrap();
        let tol = Tolerance::for_dtype(dt);
        let e = compare(
            "gpu matmul out",
            &f64s(&to_host(&g, &gout, odt, out.len())),
            &f64s(&out),
            tol,
        )
        .unwrap();

        let (mut da, mut db, mut dbias) = (zeros(dt, a.len()), zeros(dt, b.len()), zeros(odt, d.n));
        c.matmul_backward(
            Some(da.view_mut()),
            Some(db.view_mut()),
            Some(dbias.view_mut()),
            dout.view(),
            a.view(),
            b.view(),
            d,
        )
        .unwrap();
        let (mut gda, mut gdb, mut gdbias) = (
            g.alloc(dt, a.len()).unwrap(),
            g.alloc(dt, b.len()).unwrap(),
            g.alloc(odt, d.n).unwrap(),
        );
        g.matmul_backward(
            Some(CudaBackend::view_mut(&mut gda)),
            Some(CudaBackend::view_mut(&mut gdb)),
            Some(CudaBackend::view_mut(&mut gdbias)),
            CudaBackend::view(&gdout),
            CudaBackend::view(&ga),
            CudaBackend::view(&gb),
            d,
        )
        .unwrap();
        compare(
            "gpu matmul da",
            &f64s(&to_host(&g, &gda, dt, a.len())),
            &f64s(&da),
            tol,
        )
        .unwrap();
        compare(
            "gpu matmul db",
            &f64s(&to_host(&g, &gdb, dt, b.len())),
            &f64s(&db),
            tol,
        )
        .unwrap();
        compare(
            "gpu matmul dbias",
            &f64s(&to_host(&g, &gdbias, odt, d.n)),
            &f64s(&dbias),
            tol,
        )
        .unwrap();
        eprintln!("{dt} {d:?}: max |gpu − cpu| of out = {e:.3e}");
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_matmul_matches_cpu_f32_and_bf16() {
        for dt in [DType::F32, DType::BF16] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                matmul_case(
                    dt,
                    MatmulDims {
                        batch: 2,
                        m: 33,
                        n: 47,
                        k: 65,
                        trans_a: ta,
                        trans_b: tb,
                    },
                );
            }
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_elementwise_matches_cpu() {
        let (g, c) = (dev(), cpu());
        let n = 100_003;
        let (x, y) = (
            host(&rand_vec(1, n), DType::F32),
            host(&rand_vec(2, n), DType::F32),
        );
        let (gx, gy) = (to_dev(&g, &x), to_dev(&g, &y));
        // add, scale: exact in f32.
        let mut out = zeros(DType::F32, n);
        c.add_forward(out.view_mut(), x.view(), y.view(), n).unwrap();
        let mut gout = g.alloc(DType::F32, n).unwrap();
        g.add_forward(
            CudaBackend::view_mut(&mut gout),
            CudaBackend::view(&gx),
            CudaBackend::view(&gy),
            n,
        )
        .unwrap();
        assert_eq!(to_host(&g, &gout, DType::F32, n), out);
        c.scale_forward(out.view_mut(), x.view(), 0.37, n).unwrap();
        g.scale_forward(CudaBackend::view_mut(&mut gout), CudaBackend::view(&gx), 0.37, n)
            .unwrap();
        assert_eq!(to_host(&g, &gout, DType::F32, n), out);
        // f32 → bf16 rounding: bitwise equal to the CPU's round-to-nearest-even.
        let mut b = zeros(DType::BF16, n);
        c.cast(b.view_mut(), x.view(), n).unwrap();
        let mut gb = g.alloc(DType::BF16, n).unwrap();
        g.cast(CudaBackend::view_mut(&mut gb), CudaBackend::view(&gx), n)
            .unwrap();
        assert_eq!(to_host(&g, &gb, DType::BF16, n), b);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_matmul_bf16_accumulates_db_in_f32() {
        let (g, c) = (dev(), cpu());
        let d = MatmulDims::linear(64, 96, 80);
        let bf = DType::BF16;
        let (a, b, dout) = (
            host(&rand_vec(1, 64 * 96), bf),
            host(&rand_vec(2, 80 * 96), bf),
            host(&rand_vec(3, 64 * 80), bf),
        );
        let db0 = host(&rand_vec(4, 80 * 96), DType::F32);
        let mut db = db0.clone();
        c.matmul_backward(
            None,
            Some(db.view_mut()),
            None,
            dout.view(),
            a.view(),
            b.view(),
            d,
        )
        .unwrap();
        let (ga, gb, gdout) = (to_dev(&g, &a), to_dev(&g, &b), to_dev(&g, &dout));
        let mut gdb = to_dev(&g, &db0);
        g.matmul_backward(
            None,
            Some(CudaBackend::view_mut(&mut gdb)),
            None,
            CudaBackend::view(&gdout),
            CudaBackend::view(&ga),
            CudaBackend::view(&gb),
            d,
        )
        .unwrap();
        compare(
            "gpu matmul f32 db from bf16",
            &f64s(&to_host(&g, &gdb, DType::F32, db0.len())),
            &f64s(&db),
            Tolerance::for_dtype(DType::F32),
        )
        .unwrap();
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_side_stream_work_is_ordered_by_events() {
        let g = dev();
        assert_eq!(
            crate::streams::handoff(&g, 1000).unwrap(),
            HostVec::from(vec![6.0f32; 1000])
        );
        // Real side work: main fills x; the side stream copies x → y once the fill is done;
        // main scales y once the copy is done. 64 MiB, so an unordered copy would race.
        let n = 1 << 24;
        let (mut x, mut y, mut z) = (
            g.alloc(DType::F32, n).unwrap(),
            g.alloc(DType::F32, n).unwrap(),
            g.alloc(DType::F32, n).unwrap(),
        );
        g.fill(CudaBackend::view_mut(&mut x), 2.0, n).unwrap();
        let side = g.new_stream().unwrap();
        let filled = g.record(None).unwrap();
        g.wait(Some(&side), &filled).unwrap();
        let (src, dst) = (
            CudaBackend::view(&x).device_ptr(),
            CudaBackend::view_mut(&mut y).device_ptr(),
        );
        // SAFETY: both buffers hold n f32 and outlive the copy (the host waits below).
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, n * 4, side.cu_stream()) }.unwrap();
        let copied = g.record(Some(&side)).unwrap();
        g.wait(None, &copied).unwrap();
        g.scale_forward(CudaBackend::view_mut(&mut z), CudaBackend::view(&y), 3.0, n)
            .unwrap();
        g.sync_event(&g.record(None).unwrap()).unwrap();
        let out = to_host(&g, &z, DType::F32, n);
        assert!(f64s(&out).iter().all(|&v| v == 6.0));
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_event_tracking_is_off() {
        let g = dev();
        assert!(!g.context().is_event_tracking());
        // Views made from a buffer record nothing: a side stream makes the context
        // multi-stream, and even then no event is managed.
        let _side = g.new_stream().unwrap();
        assert!(!g.context().is_managing_stream_synchronization());
    }

    /// `len` elements at byte offset `off` of a flat buffer (the way a parameter shard sits in a
    /// flat buffer: 64-byte aligned, not 256).
    fn offset_view(buf: &mut <CudaBackend as Backend>::Buffer, off_elems: usize, len: usize) -> CudaMut<'_> {
        let v = CudaBackend::view_mut(buf);
        let (_, rest) = v.split_at(off_elems);
        rest.split_at(len).0
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_matmul_on_views_offset_by_64_bytes_matches_cpu() {
        let (g, c) = (dev(), cpu());
        for dt in [DType::F32, DType::BF16] {
            for d in [
                MatmulDims::linear(96, 128, 160),
                MatmulDims {
                    batch: 3,
                    ..MatmulDims::linear(48, 64, 32)
                },
            ] {
                let (na, nb, no) = (d.batch * d.m * d.k, d.batch * d.k * d.n, d.batch * d.m * d.n);
                let a = host(&rand_vec(11, na), dt);
                let b = host(&rand_vec(12, nb), dt);
                let mut out = zeros(DType::F32, no);
                c.matmul_forward(out.view_mut(), a.view(), b.view(), None, d)
                    .unwrap();
                // a, b and out each start 64 bytes into a flat buffer.
                let (oa, ob, oo) = (64 / dt.size(), 64 / dt.size(), 64 / 4);
                let mut fa = g.alloc(dt, oa + na).unwrap();
                let mut fb = g.alloc(dt, ob + nb).unwrap();
                let mut fo = g.alloc(DType::F32, oo + no).unwrap();
                g.upload(a.view(), offset_view(&mut fa, oa, na)).unwrap();
                g.upload(b.view(), offset_view(&mut fb, ob, nb)).unwrap();
                assert_eq!(offset_view(&mut fa, oa, na).device_ptr() % 256, 64);
                {
                    let ra = offset_view(&mut fa, oa, na);
                    let rb = offset_view(&mut fb, ob, nb);
                    g.matmul_forward(
                        offset_view(&mut fo, oo, no),
                        CudaBackend::freeze(&ra),
                        CudaBackend::freeze(&rb),
                        None,
                        d,
                    )
                    .unwrap();
                }
                let mut got = zeros(DType::F32, no);
                g.download(CudaBackend::freeze(&offset_view(&mut fo, oo, no)), got.view_mut())
                    .unwrap();
                compare(
                    "gpu matmul at 64-byte offsets",
                    &f64s(&got),
                    &f64s(&out),
                    Tolerance::for_dtype(dt),
                )
                .unwrap();
            }
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_bias_grad_at_6144_columns_matches_cpu_and_is_deterministic() {
        let (g, c) = (dev(), cpu());
        let (rows, n) = (2 * 1024 + 5, 6144);
        let d = MatmulDims::linear(rows, 64, n);
        let (a, b) = (
            host(&rand_vec(1, rows * 64), DType::F32),
            host(&rand_vec(2, n * 64), DType::F32),
        );
        let dout = host(&rand_vec(3, rows * n), DType::F32);
        let dbias0 = host(&rand_vec(4, n), DType::F32);
        // Exact column sums in f64: both backends are within f32 summation error of them.
        let (x, d0) = (f64s(&dout), f64s(&dbias0));
        let exact: Vec<f64> = (0..n)
            .map(|j| d0[j] + (0..rows).map(|r| x[r * n + j]).sum::<f64>())
            .collect();
        let mut cdb = dbias0.clone();
        c.matmul_backward(
            None,
            None,
            Some(cdb.view_mut()),
            dout.view(),
            a.view(),
            b.view(),
            d,
        )
        .unwrap();
        let (ga, gb, gdout) = (to_dev(&g, &a), to_dev(&g, &b), to_dev(&g, &dout));
        let run = || {
            let mut gdb = to_dev(&g, &dbias0);
            g.matmul_backward(
                None,
                None,
                Some(CudaBackend::view_mut(&mut gdb)),
                CudaBackend::view(&gdout),
                CudaBackend::view(&ga),
                CudaBackend::view(&gb),
                d,
            )
            .unwrap();
            to_host(&g, &gdb, DType::F32, n)
        };
        let first = run();
        assert_eq!(run(), first, "the reduction order is fixed");
        // Bound: rows · ε_f32 · Σ|x| per column, generously.
        let bound = |j: usize| rows as f64 * 6e-8 * (0..rows).map(|r| x[r * n + j].abs()).sum::<f64>() + 1e-6;
        for (name, v) in [("gpu", f64s(&first)), ("cpu", f64s(&cdb))] {
            for j in 0..n {
                assert!(
                    (v[j] - exact[j]).abs() <= bound(j),
                    "{name} dbias[{j}] = {} vs {}",
                    v[j],
                    exact[j]
                );
            }
        }
        compare(
            "gpu vs cpu dbias",
            &f64s(&first),
            &f64s(&cdb),
            Tolerance::for_dtype(DType::F32),
        )
        .unwrap();
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_bf16_backward_reuses_scratch_across_sizes() {
        // f32 dout with bf16 inputs goes through the scratch block; calls of growing and
        // shrinking sizes back to back (no host wait between them) each match the CPU.
        let (g, c) = (dev(), cpu());
        let bf = DType::BF16;
        let mut pending = Vec::new();
        for (i, rows) in [64usize, 512, 32, 1024, 48].into_iter().enumerate() {
            let d = MatmulDims::linear(rows, 96, 80);
            let seed = 10 * i as u64;
            let (a, b) = (
                host(&rand_vec(seed, rows * 96), bf),
                host(&rand_vec(seed + 1, 80 * 96), bf),
            );
            let dout = host(&rand_vec(seed + 2, rows * 80), DType::F32);
            let (mut da, mut db) = (zeros(bf, rows * 96), zeros(DType::F32, 80 * 96));
            c.matmul_backward(
                Some(da.view_mut()),
                Some(db.view_mut()),
                None,
                dout.view(),
                a.view(),
                b.view(),
                d,
            )
            .unwrap();
            let (ga, gb, gdout) = (to_dev(&g, &a), to_dev(&g, &b), to_dev(&g, &dout));
            let (mut gda, mut gdb) = (
                g.alloc(bf, rows * 96).unwrap(),
                g.alloc(DType::F32, 80 * 96).unwrap(),
            );
            g.matmul_backward(
                Some(CudaBackend::view_mut(&mut gda)),
                Some(CudaBackend::view_mut(&mut gdb)),
                None,
                CudaBackend::view(&gdout),
                CudaBackend::view(&ga),
                CudaBackend::view(&gb),
                d,
            )
            .unwrap();
            pending.push((da, db, gda, gdb, ga, gb, gdout));
        }
        for (da, db, gda, gdb, ..) in &pending {
            let tol = Tolerance::for_dtype(bf);
            compare("da", &f64s(&to_host(&g, gda, bf, da.len())), &f64s(da), tol).unwrap();
            compare(
                "db",
                &f64s(&to_host(&g, gdb, DType::F32, db.len())),
                &f64s(db),
                tol,
            )
            .unwrap();
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_uploads_do_not_wait_and_the_source_is_reusable_at_once() {
        // More than the staging ring holds (several chunks, an odd tail), uploaded twice from
        // one host vector overwritten in between: each buffer holds what was uploaded.
        let g = dev();
        let n = (3 * (4 << 20) + 12_345) / 4;
        let mut src: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let (mut x, mut y) = (g.alloc(DType::F32, n).unwrap(), g.alloc(DType::F32, n).unwrap());
        g.upload(HostVec::from(src.clone()).view(), CudaBackend::view_mut(&mut x))
            .unwrap();
        let first = src.clone();
        src.iter_mut().for_each(|v| *v = -*v - 1.0);
        g.upload(HostVec::from(src.clone()).view(), CudaBackend::view_mut(&mut y))
            .unwrap();
        assert_eq!(to_host(&g, &x, DType::F32, n), HostVec::from(first));
        assert_eq!(to_host(&g, &y, DType::F32, n), HostVec::from(src));
        // A download waits for the kernels before it.
        g.fill(CudaBackend::view_mut(&mut x), 7.0, n).unwrap();
        assert!(f64s(&to_host(&g, &x, DType::F32, n)).iter().all(|&v| v == 7.0));
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU: cargo test -p weft-kernels --features cuda -- --ignored gpu_"]
    fn gpu_kernels_are_cached_on_disk_and_a_corrupt_entry_is_rebuilt() {
        let dir = std::env::temp_dir().join(format!("weft-gpu-kernel-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fill_once = || {
            let g = CudaBackend::with_kernel_cache(0, Some(dir.clone())).unwrap();
            assert_eq!(g.kernel_cache_dir(), Some(dir.as_path()));
            let mut x = g.alloc(DType::F32, 1000).unwrap();
            g.fill(CudaBackend::view_mut(&mut x), 3.0, 1000).unwrap();
            assert_eq!(
                to_host(&g, &x, DType::F32, 1000),
                HostVec::from(vec![3.0f32; 1000])
            );
        };
        fill_once();
        // Only the module used was compiled (lazily), into a cubin for this device.
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let name = entries[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("elementwise-sm_"), "{name}");
        let good = std::fs::read(&entries[0]).unwrap();
        // Corrupt it: the next backend ignores it, compiles again and rewrites it.
        std::fs::write(&entries[0], &good[..good.len() / 2]).unwrap();
        fill_once();
        assert_eq!(std::fs::read(&entries[0]).unwrap(), good);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
