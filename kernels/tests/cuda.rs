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

#[cfg(feature = "cuda")]
mod gpu {
    use crate::harness::*;
    use weft_kernels::cuda::CudaBackend;
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
}
