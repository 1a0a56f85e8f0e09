//! ThreadSanitizer over the emulated kernels. This test binary runs again as a subprocess with
//! the TSan runtime preloaded and `WEFT_EMU_SANITIZE=thread`, so the emulated libraries are
//! rebuilt with `-fsanitize=thread` and every CUDA thread's memory accesses are checked: the
//! emulated families that synchronize must come out clean (all of them with `WEFT_TSAN_ALL=1`),
//! and a block reduction with its `__syncthreads` removed must be reported.

use super::*;
use std::process::Output;

/// Set in the subprocess that launches the broken reduction.
const RACE_CHILD: &str = "WEFT_EMU_RACE_CHILD";

/// The TSan runtime of the g++ that builds the libraries.
fn libtsan() -> PathBuf {
    let out = Command::new("g++")
        .arg("-print-file-name=libtsan.so")
        .output()
        .unwrap_or_else(|e| panic!("g++ (needed to build the kernels' emulator): {e}"));
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_absolute() && path.exists(),
        "g++ has no ThreadSanitizer runtime (libtsan.so; on Debian: apt-get install libtsan2)"
    );
    path
}

/// This test binary with `args`, under ThreadSanitizer.
fn sanitized_run(args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .env("LD_PRELOAD", libtsan())
        .env("WEFT_EMU_SANITIZE", "thread")
        // Every report is printed; only those about the kernels count (see `kernel_reports`).
        .env("TSAN_OPTIONS", "halt_on_error=0 exitcode=66")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// The ThreadSanitizer reports in `text` whose stacks reach the kernels, the prelude or the
/// emulator. The Rust side (the test harness's channels, the CPU backend's rayon pool, the shim
/// table's lock) synchronizes through primitives TSan cannot see from uninstrumented code, so
/// its reports say nothing about the kernels and are not counted.
fn kernel_reports(text: &str) -> Vec<&str> {
    text.split("==================")
        .filter(|r| r.contains("WARNING: ThreadSanitizer"))
        .filter(|r| {
            // The racing accesses' stacks only: a report goes on to where the memory was
            // allocated and where each thread was created (the emulator creates them all).
            let accesses = ["\n  Location is", "\n  Thread T", "\n  Mutex M"]
                .iter()
                .filter_map(|m| r.find(m))
                .min()
                .map_or(*r, |end| &r[..end]);
            [".cu:", ".cuh:", "cuda_emu.h:", "ptx_emu.h:"]
                .iter()
                .any(|k| accesses.contains(k))
        })
        .collect()
}

#[test]
fn reports_are_attributed_to_the_kernels_or_not() {
    let kernel = "==================\nWARNING: ThreadSanitizer: data race (pid=1)\n  Write of size 4 at 0x1 by thread T2:\n    #0 tree_sum kernels/tests/emu/reductions.cu:21 (libreductions.so+0x1)\n==================\n";
    let rust = "==================\nWARNING: ThreadSanitizer: data race (pid=1)\n  Read of size 8 at 0x2 by thread T3:\n    #0 memcpy <null> (libtsan.so.2+0x1)\n    #1 std::sync::mpmc::list::Channel<T>::read (kernels-1234+0x9)\n\n  Thread T2 (tid=3, finished) created by thread T11 at:\n    #2 emu::launch_packed kernels/tests/emu/cuda_emu.h:401 (attention.so+0x1)\n==================\n";
    assert_eq!(kernel_reports(kernel).len(), 1);
    assert!(kernel_reports(rust).is_empty());
    assert_eq!(kernel_reports(&format!("{rust}{kernel}")).len(), 1);
}

#[test]
fn the_emulated_suite_is_race_free() {
    if sanitizer().is_some() {
        return; // already the sanitized run (which skips this module)
    }
    // CI runs the families that cover every kind of sharing the kernels use (the prelude's
    // warp and block reductions and the mma/ldmatrix/cp.async twins, the two-stage reductions,
    // the norms' row reductions and shared accumulators, the embedding backward's key sort in
    // shared memory) within its time; the whole suite,
    // attention included (about ten minutes on two cores), runs with `WEFT_TSAN_ALL=1`.
    let mut args = if std::env::var_os("WEFT_TSAN_ALL").is_some() {
        vec!["emulated::", "--skip", "emulated::tsan"]
    } else {
        vec![
            "emulated::prelude",
            "emulated::reduce",
            "emulated::norm",
            "emulated::embed::device_sort_with_small_tiles",
        ]
    };
    args.extend(["--test-threads", "2"]);
    let (out, text) = sanitized_run(&args, &[]);
    let races = kernel_reports(&text);
    assert!(
        races.is_empty(),
        "ThreadSanitizer reports in the kernels or the emulator:\n{}",
        races.join("==================")
    );
    assert!(
        !text.contains("test result: FAILED") && !text.contains("panicked"),
        "the emulated suite under ThreadSanitizer ({}):\n{text}",
        out.status
    );
    let passed: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 10,
        "only {passed} emulated tests ran under ThreadSanitizer:\n{text}"
    );
}

#[test]
fn a_missing_barrier_is_reported() {
    if std::env::var_os(RACE_CHILD).is_some() {
        // The subprocess: the tree reduction of reductions.cu without the barrier between its
        // steps; threads read partial sums other threads are still writing. ThreadSanitizer
        // keeps a few accesses per word, so with many threads on one word a race can slip
        // past one launch: several launches of small blocks make the report certain in
        // practice (it is printed once).
        let lib = shim("reductions", &["WEFT_DROP_BARRIER"]);
        for block in [64u32, 64, 128, 256, 64, 128] {
            let n = 2 * block as usize;
            let mut x = HostVec::from(vec![1.0f32; n]);
            let mut sums = HostVec::zeros(weft_kernels::DType::F32, 2);
            let args = [buf(&mut sums), buf(&mut x), Arg::U64(n as u64)];
            lib.launch("tree_sum", dim(2), dim(block), 4 * block as usize, &args);
        }
        return;
    }
    if sanitizer().is_some() {
        return;
    }
    let name = "emulated::tsan::a_missing_barrier_is_reported";
    let (out, text) = sanitized_run(&["--exact", name, "--test-threads", "1"], &[(RACE_CHILD, "1")]);
    assert!(
        kernel_reports(&text)
            .iter()
            .any(|r| r.contains("data race") && r.contains("tree_sum")),
        "ThreadSanitizer did not report the missing barrier ({}):\n{text}",
        out.status
    );
    assert_eq!(out.status.code(), Some(66), "TSan's exit code:\n{text}");
}
