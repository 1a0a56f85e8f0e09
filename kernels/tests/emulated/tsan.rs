//! ThreadSanitizer over the emulated kernels. This test binary runs again as a subprocess with
//! the TSan runtime preloaded and `WEFT_EMU_SANITIZE=thread`, so the emulated libraries are
//! rebuilt with `-fsanitize=thread` and every CUDA thread's memory accesses are checked: the
//! emulated suite must come out clean, and a block reduction with its `__syncthreads` removed
//! must be reported.

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

#[test]
fn the_emulated_suite_is_race_free() {
    if sanitizer().is_some() {
        return; // already the sanitized run (which skips this module)
    }
    let (out, text) = sanitized_run(&["emulated::", "--skip", "emulated::tsan", "--test-threads", "2"], &[]);
    assert!(
        out.status.success() && !text.contains("ThreadSanitizer"),
        "the emulated suite under ThreadSanitizer ({}):\n{text}",
        out.status
    );
    let passed: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("test result: ok. "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 10, "only {passed} emulated tests ran under ThreadSanitizer:\n{text}");
}

#[test]
fn a_missing_barrier_is_reported() {
    if std::env::var_os(RACE_CHILD).is_some() {
        // The subprocess: the tree reduction of reductions.cu without the barrier between its
        // steps; threads read partial sums other threads are still writing.
        let lib = shim("reductions", &["WEFT_DROP_BARRIER"]);
        let n = 2 * 256;
        let mut x = HostVec::from(vec![1.0f32; n]);
        let mut sums = HostVec::zeros(weft_kernels::DType::F32, 2);
        let args = [buf(&mut sums), buf(&mut x), Arg::U64(n as u64)];
        lib.launch("tree_sum", dim(2), dim(256), 4 * 256, &args);
        return;
    }
    if sanitizer().is_some() {
        return;
    }
    let name = "emulated::tsan::a_missing_barrier_is_reported";
    let (out, text) = sanitized_run(&["--exact", name, "--test-threads", "1"], &[(RACE_CHILD, "1")]);
    assert!(
        text.contains("WARNING: ThreadSanitizer: data race") && text.contains("tree_sum"),
        "ThreadSanitizer did not report the missing barrier ({}):\n{text}",
        out.status
    );
    assert_eq!(out.status.code(), Some(66), "TSan's exit code:\n{text}");
}
