//! Every `kernels/cuda/*.cu`, and the emulator's probes of the prelude's PTX wrappers
//! (`kernels/tests/emu/*.cu`), compiles with the real NVRTC for sm_80 and sm_90 with an empty
//! log; `ptxas -v` assembles the PTX for both and every kernel stays within its register budget
//! with no spills.
//!
//! NVRTC needs no GPU or driver. The test finds libnvrtc and ptxas through `WEFT_NVRTC` /
//! `WEFT_PTXAS`, then the pip wheels `nvidia-cuda-nvrtc` and `nvidia-cuda-nvcc` (located
//! through `python3 -c 'import nvidia'`), then `LD_LIBRARY_PATH`/`PATH` and `/usr/local/cuda`.
//! Where they cannot be found it says so on stderr and passes, unless `WEFT_REQUIRE_NVRTC` is
//! set: CI installs the wheels and sets it (`.ci/run`); a developer can
//! `pip install nvidia-cuda-nvrtc nvidia-cuda-nvcc`.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The most registers each kernel may use (per thread). 0 spill bytes always.
const BUDGETS: &[(&str, u32)] = &[
    // kernels/cuda/elementwise.cu
    ("add_f32", 16),
    ("add_bf16", 16),
    ("accumulate_f32", 16),
    ("accumulate_bf16", 16),
    ("accumulate_f32_bf16", 16),
    ("fill_f32", 16),
    ("fill_bf16", 16),
    ("scale_f32", 16),
    ("scale_bf16", 16),
    ("cast_f32_bf16", 16),
    ("cast_bf16_f32", 16),
    ("bias_add_f32", 24),
    // kernels/cuda/activation.cu
    ("gelu_forward_f32", 24),
    ("gelu_forward_bf16", 24),
    ("gelu_backward_f32", 24),
    ("gelu_backward_bf16", 24),
    ("silu_forward_f32", 24),
    ("silu_forward_bf16", 24),
    ("silu_backward_f32", 24),
    ("silu_backward_bf16", 24),
    ("swiglu_forward_f32", 24),
    ("swiglu_forward_bf16", 24),
    ("swiglu_backward_f32", 24),
    ("swiglu_backward_bf16", 24),
    // kernels/cuda/norm.cu
    ("layernorm_forward_f32", 32),
    ("layernorm_forward_bf16", 32),
    ("layernorm_backward_f32", 40),
    ("layernorm_backward_bf16", 40),
    ("rmsnorm_forward_f32", 32),
    ("rmsnorm_forward_bf16", 32),
    ("rmsnorm_backward_f32", 40),
    ("rmsnorm_backward_bf16", 40),
    ("param_grad_sum_f32", 32),
    ("param_grad_sum_bf16_f32", 32),
    // kernels/cuda/attention.cu (the bf16 kernels' largest instantiation, HD = 128, sets them;
    // dkdv_bf16 holds 128 f32 accumulators per thread there and uses all 255)
    ("attention_forward_f32", 120),
    ("attention_forward_bf16", 232),
    ("attention_backward_delta_f32", 40),
    ("attention_backward_delta_bf16", 40),
    ("attention_backward_dq_f32", 120),
    ("attention_backward_dq_bf16", 232),
    ("attention_backward_dkdv_f32", 120),
    ("attention_backward_dkdv_bf16", 255),
    ("attention_merge_f32", 32),
    ("attention_merge_bf16", 32),
    // kernels/cuda/modulation.cu
    ("modulate_forward_f32", 24),
    ("modulate_forward_bf16", 24),
    ("modulate_backward_f32", 40),
    ("modulate_backward_bf16", 40),
    ("gate_forward_f32", 24),
    ("gate_forward_bf16", 24),
    ("gate_backward_f32", 40),
    ("gate_backward_bf16", 40),
    ("cond_grad_sum_f32", 32),
    ("cond_grad_sum_bf16_f32", 32),
    // kernels/cuda/rope.cu
    ("rope_forward_f32", 32),
    ("rope_forward_bf16", 32),
    ("rope_backward_f32", 32),
    ("rope_backward_bf16", 32),
    // kernels/cuda/shape.cu
    ("swap_axes_f32", 32),
    ("swap_axes_bf16", 32),
    // kernels/cuda/reduce.cu
    ("bias_grad_partial_f32", 40),
    ("bias_grad_partial_bf16", 40),
    ("bias_grad_finish_f32", 40),
    ("bias_grad_finish_bf16", 40),
    // kernels/cuda/loss.cu
    ("cross_entropy_forward_f32", 24),
    ("cross_entropy_forward_bf16", 24),
    ("cross_entropy_backward_f32", 32),
    ("cross_entropy_backward_bf16", 32),
    ("mse_forward_partial_f32", 32),
    ("mse_forward_partial_bf16", 32),
    ("mse_forward_finish_f32", 24),
    ("mse_backward_f32", 24),
    ("mse_backward_bf16", 24),
    // kernels/cuda/embed.cu
    ("embedding_forward_f32", 24),
    ("embedding_forward_bf16", 24),
    ("sort_keys_pack", 16),
    ("sort_keys_tile", 32),
    ("sort_keys_step", 24),
    ("sort_keys_merge", 24),
    ("embedding_backward_f32", 40),
    ("embedding_backward_bf16", 40),
    ("embedding_backward_f32_bf16", 40),
    ("patchify_forward_f32", 40),
    ("patchify_forward_bf16", 40),
    ("patchify_backward_f32", 40),
    ("patchify_backward_bf16", 40),
    ("unpatchify_forward_f32", 40),
    ("unpatchify_forward_bf16", 40),
    ("unpatchify_backward_f32", 40),
    ("unpatchify_backward_bf16", 40),
    ("timestep_embedding_forward_f32", 32),
    ("timestep_embedding_forward_bf16", 32),
    ("timestep_embedding_backward_f32", 40),
    ("timestep_embedding_backward_bf16", 40),
    // kernels/cuda/optim.cu
    ("adamw_update_f32", 40),
    ("ademamix_update_f32", 40),
    ("sum_squares_partial_f32", 32),
    ("sum_squares_partial_bf16", 32),
    ("sum_squares_finish_f32", 24),
    ("sum_squares_finish_f64", 24),
    ("sum_partial_f32", 32),
    ("sum_partial_bf16", 32),
    ("sum_finish_f32", 24),
    ("sum_finish_f64", 24),
    ("l2norm_forward_finish_f32", 24),
    ("l2norm_backward_f32", 24),
    ("momentum_update_f32", 24),
    ("apply_direction_f32", 16),
    ("normalize_frobenius_f32", 32),
    ("normalize_rows_f32", 32),
    ("normalize_cols_f32", 40),
    ("normalize_sign_f32", 16),
    ("transpose_scaled_f32", 24),
    // kernels/tests/emu: the prelude's probes
    ("reduce_probe", 32),
    ("tree_sum", 24),
    ("mma_probe", 64),
];

const ARCHS: [&str; 2] = ["80", "90"];

type Prog = *mut std::ffi::c_void;

/// The NVRTC entry points this test calls.
struct Nvrtc {
    lib: libloading::Library,
    path: PathBuf,
}

impl Nvrtc {
    fn version(&self) -> (c_int, c_int) {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: nvrtcVersion(int*, int*), as nvrtc.h declares it.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int>(b"nvrtcVersion")
                .unwrap();
            f(&mut major, &mut minor);
        }
        (major, minor)
    }

    /// PTX for `compute_<arch>`, or the compile log.
    fn compile(
        &self,
        name: &str,
        src: &str,
        headers: &[(&str, String)],
        arch: &str,
    ) -> Result<(String, String), String> {
        let c = |s: &str| CString::new(s).unwrap();
        let (src, name) = (c(src), c(name));
        let (hdr_src, hdr_names): (Vec<CString>, Vec<CString>) =
            headers.iter().map(|(n, s)| (c(s), c(n))).unzip();
        let hdr_src: Vec<*const c_char> = hdr_src.iter().map(|s| s.as_ptr()).collect();
        let hdr_names: Vec<*const c_char> = hdr_names.iter().map(|s| s.as_ptr()).collect();
        let opts = [c(&format!("--gpu-architecture=compute_{arch}")), c("--std=c++17")];
        let opts: Vec<*const c_char> = opts.iter().map(|s| s.as_ptr()).collect();
        type Create = unsafe extern "C" fn(
            *mut Prog,
            *const c_char,
            *const c_char,
            c_int,
            *const *const c_char,
            *const *const c_char,
        ) -> c_int;
        type Compile = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int;
        type Size = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
        type Get = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;
        type Destroy = unsafe extern "C" fn(*mut Prog) -> c_int;
        // SAFETY: the signatures are nvrtc.h's; every string is NUL-terminated and outlives the
        // calls; the log and PTX buffers have the sizes NVRTC reported.
        unsafe {
            let get = |s: &[u8]| self.lib.get::<Size>(s).unwrap();
            let mut prog: Prog = std::ptr::null_mut();
            let rc = self.lib.get::<Create>(b"nvrtcCreateProgram").unwrap()(
                &mut prog,
                src.as_ptr(),
                name.as_ptr(),
                headers.len() as c_int,
                hdr_src.as_ptr(),
                hdr_names.as_ptr(),
            );
            assert_eq!(rc, 0, "nvrtcCreateProgram");
            let rc = self.lib.get::<Compile>(b"nvrtcCompileProgram").unwrap()(
                prog,
                opts.len() as c_int,
                opts.as_ptr(),
            );
            let mut n = 0usize;
            get(b"nvrtcGetProgramLogSize")(prog, &mut n);
            let mut log = vec![0 as c_char; n.max(1)];
            self.lib.get::<Get>(b"nvrtcGetProgramLog").unwrap()(prog, log.as_mut_ptr());
            let log = CStr::from_ptr(log.as_ptr()).to_string_lossy().into_owned();
            let ptx = if rc == 0 {
                get(b"nvrtcGetPTXSize")(prog, &mut n);
                let mut ptx = vec![0 as c_char; n.max(1)];
                self.lib.get::<Get>(b"nvrtcGetPTX").unwrap()(prog, ptx.as_mut_ptr());
                Some(CStr::from_ptr(ptx.as_ptr()).to_string_lossy().into_owned())
            } else {
                None
            };
            self.lib.get::<Destroy>(b"nvrtcDestroyProgram").unwrap()(&mut prog);
            ptx.map(|p| (p, log.clone())).ok_or(log)
        }
    }
}

/// Directories of the pip wheels' `nvidia` namespace package.
fn wheel_dirs() -> Vec<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import nvidia; print('\\n'.join(nvidia.__path__))"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(PathBuf::from)
            .collect(),
        _ => vec![],
    }
}

/// `<wheel dir>/<any>/<sub>/<file>` for the newest CUDA layout first (cu13, then cu12's
/// `cuda_nvrtc`/`cuda_nvcc`).
fn in_wheels(sub: &str, file: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = vec![];
    for d in wheel_dirs() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut pkgs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        pkgs.sort();
        pkgs.reverse();
        for p in pkgs {
            let Ok(files) = std::fs::read_dir(p.join(sub)) else {
                continue;
            };
            let mut files: Vec<PathBuf> = files
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.file_name().and_then(|n| n.to_str()).is_some_and(&file))
                .collect();
            files.sort();
            found.extend(files.into_iter().rev());
        }
    }
    found
}

fn find_nvrtc() -> Result<Nvrtc, String> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("WEFT_NVRTC")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.extend(in_wheels("lib", |n| n.starts_with("libnvrtc.so.")));
    candidates.extend(
        [
            "libnvrtc.so.13",
            "libnvrtc.so.12",
            "libnvrtc.so",
            "/usr/local/cuda/lib64/libnvrtc.so",
        ]
        .map(PathBuf::from),
    );
    let mut tried = vec![];
    for c in candidates {
        // SAFETY: loading NVRTC runs its initialisers only.
        match unsafe { libloading::Library::new(&c) } {
            Ok(lib) => return Ok(Nvrtc { lib, path: c }),
            Err(e) => tried.push(format!("{}: {e}", c.display())),
        }
    }
    Err(tried.join("; "))
}

fn find_ptxas() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("WEFT_PTXAS")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    candidates.extend(in_wheels("bin", |n| n == "ptxas"));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("ptxas")));
    }
    candidates.push("/usr/local/cuda/bin/ptxas".into());
    candidates.into_iter().find(|p| p.is_file())
}

/// What ptxas reported for one kernel.
#[derive(Debug, Default)]
struct Usage {
    registers: u32,
    spill_bytes: u32,
    shared: u32,
}

/// `ptxas -v` for `sm_<arch>`: each entry's registers, spill bytes and static shared memory.
fn ptxas(ptxas: &Path, ptx: &str, arch: &str, what: &str) -> Vec<(String, Usage)> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nvrtc");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{what}.sm_{arch}.{}.ptx", std::process::id()));
    std::fs::write(&file, ptx).unwrap();
    let out = Command::new(ptxas)
        .args(["-v", "--gpu-name", &format!("sm_{arch}"), "-o", "/dev/null"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ptxas sm_{arch} on {what}:\n{text}");
    let _ = std::fs::remove_file(&file);
    let num = |l: &str, unit: &str| -> u32 {
        l.split(',')
            .find_map(|p| {
                p.trim()
                    .strip_suffix(unit)
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
            })
            .unwrap_or(0)
    };
    let mut usage: Vec<(String, Usage)> = vec![];
    for l in text.lines() {
        if let Some(name) = l.split("Compiling entry function '").nth(1) {
            usage.push((name.split('\'').next().unwrap().to_string(), Usage::default()));
        } else if let Some((_, u)) = usage.last_mut() {
            if l.contains("spill stores") {
                u.spill_bytes = num(l, "bytes spill stores") + num(l, "bytes spill loads");
            } else if l.contains("Used ") {
                u.registers = num(&l.replace("Used ", ", "), "registers");
                u.shared = num(l, "bytes smem");
            }
        }
    }
    usage
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_within_budget() {
    let required = std::env::var_os("WEFT_REQUIRE_NVRTC").is_some();
    let nvrtc = match find_nvrtc() {
        Ok(n) => n,
        Err(tried) => {
            assert!(
                !required,
                "WEFT_REQUIRE_NVRTC is set but NVRTC was not found; tried {tried}"
            );
            eprintln!(
                "SKIPPED: NVRTC not found, the CUDA sources were not compiled \
                 (pip install nvidia-cuda-nvrtc nvidia-cuda-nvcc, or set WEFT_NVRTC); tried {tried}"
            );
            return;
        }
    };
    let ptxas_path = find_ptxas();
    let (major, minor) = nvrtc.version();
    eprintln!("NVRTC {major}.{minor} ({})", nvrtc.path.display());
    match &ptxas_path {
        Some(p) => eprintln!("ptxas: {}", p.display()),
        None => {
            assert!(!required, "WEFT_REQUIRE_NVRTC is set but ptxas was not found");
            eprintln!(
                "SKIPPED (ptxas part): ptxas not found (pip install nvidia-cuda-nvcc, or set WEFT_PTXAS)"
            )
        }
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Every header of kernels/cuda (the prelude, the attention kernels' parts), by name.
    let mut owned: Vec<(String, String)> = vec![];
    for e in std::fs::read_dir(root.join("cuda")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "cuh") {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            owned.push((name, std::fs::read_to_string(&p).unwrap()));
        }
    }
    owned.sort();
    let headers: Vec<(&str, String)> = owned.iter().map(|(n, s)| (n.as_str(), s.clone())).collect();
    assert!(headers.iter().any(|h| h.0 == "prelude.cuh"), "{owned:?}");
    let mut sources: Vec<PathBuf> = vec![];
    for dir in ["cuda", "tests/emu"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cu") {
                sources.push(p);
            }
        }
    }
    sources.sort();
    assert!(sources.len() >= 4, "{sources:?}");

    let mut seen: Vec<String> = vec![];
    for path in &sources {
        let name = path.file_name().unwrap().to_str().unwrap();
        let src = std::fs::read_to_string(path).unwrap();
        for arch in ARCHS {
            let (ptx, log) = nvrtc
                .compile(name, &src, &headers, arch)
                .unwrap_or_else(|log| panic!("NVRTC compute_{arch}: {name} does not compile:\n{log}"));
            assert!(
                log.trim().is_empty(),
                "NVRTC compute_{arch}: {name} compiles with a log:\n{log}"
            );
            let Some(ptxas_path) = &ptxas_path else { continue };
            let usage = ptxas(ptxas_path, &ptx, arch, name);
            assert!(!usage.is_empty(), "{name}: ptxas reported no kernels");
            for (kernel, u) in usage {
                eprintln!(
                    "sm_{arch} {name:>16} {kernel:<24} {:>3} registers, {:>5} bytes smem, {} bytes spilled",
                    u.registers, u.shared, u.spill_bytes
                );
                let budget = BUDGETS
                    .iter()
                    .find(|(k, _)| *k == kernel)
                    .unwrap_or_else(|| {
                        panic!("{name}: kernel {kernel} has no register budget in tests/nvrtc.rs")
                    })
                    .1;
                assert!(
                    u.registers <= budget,
                    "sm_{arch} {kernel}: {} registers, over its budget of {budget}",
                    u.registers
                );
                assert_eq!(u.spill_bytes, 0, "sm_{arch} {kernel}: spills");
                seen.push(kernel);
            }
        }
    }
    if ptxas_path.is_some() {
        for (k, _) in BUDGETS {
            assert!(
                seen.iter().any(|s| s == k),
                "budget for {k}, which no source defines"
            );
        }
    }
}
