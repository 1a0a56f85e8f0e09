//! `weft bench kernels`: how fast the engine is, as ratios against references measured in the
//! same run (the machine's own large-sgemm throughput through the same GEMM library).

use anyhow::Result;
use std::time::{Duration, Instant};
use weft_kernels::cpu::matmul::sgemm;
use weft_kernels::gradcheck::SplitMix;
use weft_kernels::{AttentionOps, AttnDims, Backend, CpuBackend, DType, HostVec, MatmulDims, MatmulOps};

#[derive(clap::Args)]
pub struct KernelBenchArgs {
    /// Smaller shapes (for a quick look on a laptop or in CI).
    #[arg(long)]
    pub quick: bool,
    /// Minimum measuring time per case, in milliseconds.
    #[arg(long, default_value_t = 600)]
    pub min_ms: u64,
}

/// Best time of repeated runs, repeating until `min` has passed (at least 2 runs, 1 warm-up).
fn best_of(min: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let (start, mut best, mut runs) = (Instant::now(), Duration::MAX, 0);
    while runs < 2 || start.elapsed() < min {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    best
}

fn random(seed: u64, n: usize) -> HostVec {
    let mut r = SplitMix::new(seed);
    HostVec::from((0..n).map(|_| r.uniform() as f32).collect::<Vec<_>>())
}

pub fn info() {
    let cpu = CpuBackend::new();
    println!("cpu : {}", cpu.name());
    match weft_kernels::cuda::CudaBackend::new(0) {
        Ok(g) => println!("cuda: {}", g.name()),
        Err(e) => println!("cuda: unavailable — {e}"),
    }
}

pub fn kernels(args: &KernelBenchArgs) -> Result<()> {
    let cpu = CpuBackend::new();
    let min = Duration::from_millis(args.min_ms);
    println!("device: {}", cpu.name());

    // The reference: a large square sgemm straight through the GEMM library, measured first
    // and again last (clocks and caches settle), keeping the better.
    let p = if args.quick { 1024 } else { 2048 };
    let measure_peak = || {
        let (a, b) = (random(1, p * p), random(2, p * p));
        let mut c = vec![0f32; p * p];
        let (HostVec::F32(av), HostVec::F32(bv)) = (&a, &b) else {
            unreachable!("built as f32")
        };
        let t = best_of(min, || sgemm(p, p, p, &mut c, av, bv));
        2.0 * (p * p * p) as f64 / t.as_secs_f64() / 1e9
    };
    let first = measure_peak();
    let mut rows_out = Vec::new();

    // Transformer-shaped matmuls through the backend (validation included), forward and
    // backward (da and db: two more GEMMs of the same size).
    let (rows, c_) = if args.quick { (512, 384) } else { (2048, 768) };
    for (name, k, n) in [
        ("qkv", c_, 3 * c_),
        ("attn out", c_, c_),
        ("mlp up", c_, 4 * c_),
        ("mlp down", 4 * c_, c_),
    ] {
        let d = MatmulDims::linear(rows, k, n);
        let (x, w) = (random(3, rows * k), random(4, n * k));
        let (mut y, dy) = (cpu.alloc(DType::F32, rows * n)?, random(5, rows * n));
        let (mut dx, mut dw) = (cpu.alloc(DType::F32, rows * k)?, cpu.alloc(DType::F32, n * k)?);
        let flops = 2.0 * (rows * k * n) as f64;
        let tf = best_of(min, || {
            cpu.matmul_forward(y.view_mut(), x.view(), w.view(), None, d)
                .expect("valid shapes")
        });
        let tb = best_of(min, || {
            cpu.matmul_backward(
                Some(dx.view_mut()),
                Some(dw.view_mut()),
                None,
                dy.view(),
                x.view(),
                w.view(),
                d,
            )
            .expect("valid shapes")
        });
        rows_out.push((
            format!("{name} {rows}x{k} -> {n}"),
            flops / tf.as_secs_f64() / 1e9,
            2.0 * flops / tb.as_secs_f64() / 1e9,
        ));
    }
    let peak = first.max(measure_peak());
    println!("peak  sgemm {p}x{p}x{p}: {peak:8.1} GFLOP/s  (the reference for the ratios below)");
    println!();
    println!(
        "{:<34} {:>10} {:>8} {:>10} {:>8}",
        "matmul (rows x in -> out)", "fwd GF/s", "of peak", "bwd GF/s", "of peak"
    );
    for (name, gf, gb) in rows_out {
        println!(
            "{name:<34} {gf:>10.1} {:>7.0}% {gb:>10.1} {:>7.0}%",
            100.0 * gf / peak,
            100.0 * gb / peak
        );
    }
    println!();

    // Attention: tokens/s forward and forward+backward, causal and full.
    let (t, nh, hd) = if args.quick { (256, 6, 64) } else { (1024, 12, 64) };
    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "attention (B=1)", "fwd tok/s", "fwd+bwd tok/s", "fwd GF/s"
    );
    for causal in [false, true] {
        let d = AttnDims::new(1, t, nh, nh, hd, causal);
        let n = t * nh * hd;
        let (q, k, v, dout) = (random(6, n), random(7, n), random(8, n), random(9, n));
        let (mut out, mut lse) = (cpu.alloc(DType::F32, n)?, cpu.alloc(DType::F32, nh * t)?);
        let (mut dq, mut dk, mut dv) = (
            cpu.alloc(DType::F32, n)?,
            cpu.alloc(DType::F32, n)?,
            cpu.alloc(DType::F32, n)?,
        );
        let tf = best_of(min, || {
            cpu.attention_forward(out.view_mut(), lse.view_mut(), q.view(), k.view(), v.view(), d)
                .expect("valid shapes")
        });
        let tb = best_of(min, || {
            cpu.attention_backward(
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
            .expect("valid shapes")
        });
        // QKᵀ and PV: 4·T²·HD flops per head, half of it under a causal mask.
        let flops = 4.0 * (t * t * hd * nh) as f64 * if causal { 0.5 } else { 1.0 };
        println!(
            "{:<34} {:>12.0} {:>12.0} {:>10.1}",
            format!("{} T={t} NH={nh} HD={hd}", if causal { "causal" } else { "full" }),
            t as f64 / tf.as_secs_f64(),
            t as f64 / (tf + tb).as_secs_f64(),
            flops / tf.as_secs_f64() / 1e9
        );
    }
    Ok(())
}
