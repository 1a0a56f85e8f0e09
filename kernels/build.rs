//! Refuses a build with two CUDA major versions before cudarc (which cannot bind both, and
//! would fail with hundreds of duplicate definitions) is compiled.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let on = |f: &str| std::env::var_os(format!("CARGO_FEATURE_{f}")).is_some();
    if on("CUDA_12") && on("CUDA_13") {
        eprintln!(
            "error: weft-kernels: features `cuda-12` and `cuda-13` are exclusive (one CUDA major \
             version per build; `cuda` means `cuda-13`). Build with `--features cuda` for the \
             CUDA 13.x libraries or `--features cuda-12` for 12.x, not both (and not \
             `--all-features`)."
        );
        std::process::exit(1);
    }
}
