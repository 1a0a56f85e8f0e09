//! The CUDA kernels on the CPU: each `kernels/tests/emu/<family>.cpp` compiles a
//! `kernels/cuda/<family>.cu`, unchanged, against the emulator (`cuda_emu.h`) into a shared
//! library, which these tests load and launch like the CUDA driver would (grid, block, shared
//! bytes, one pointer per kernel argument), then compare with the CPU backend.
//!
//! Libraries are built with g++ under the target directory, named by a hash of every kernel and
//! emulator source and of the flags, so an edit rebuilds them. With `WEFT_EMU_SANITIZE=thread`
//! they are built with ThreadSanitizer (the `tsan` tests run this suite so, in a subprocess).

mod activation;
mod attention;
mod bounds;
mod elementwise;
mod embed;
mod loss;
mod modulation;
mod norm;
mod optim;
mod optim_matrix;
mod prelude;
mod reduce;
mod rope;
mod shape;
mod tsan;

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use weft_kernels::{bf16, HostVec};

/// A kernel launch's grid or block shape (CUDA's `dim3`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Dim3 {
    pub x: u32,
    pub y: u32,
    pub z: u32,
}

/// A 1-D grid or block.
pub fn dim(x: u32) -> Dim3 {
    Dim3 { x, y: 1, z: 1 }
}

/// One kernel argument, passed by address as `cuLaunchKernel` passes them.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(*mut c_void),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl Arg {
    fn addr(&self) -> *mut c_void {
        match self {
            Arg::Ptr(p) => p as *const *mut c_void as *mut c_void,
            Arg::U64(v) => v as *const u64 as *mut c_void,
            Arg::F32(v) => v as *const f32 as *mut c_void,
            Arg::F64(v) => v as *const f64 as *mut c_void,
        }
    }
}

/// The address of a buffer's first element, as a kernel argument.
pub fn buf(v: &mut HostVec) -> Arg {
    Arg::Ptr(v.view_mut().as_bytes_mut().as_mut_ptr().cast())
}

type LaunchFn = unsafe extern "C" fn(Dim3, Dim3, usize, *mut *mut c_void) -> i32;
type ErrorFn = unsafe extern "C" fn() -> *const c_char;

/// One family's kernels, loaded.
pub struct Shim {
    name: String,
    lib: libloading::Library,
}

impl Shim {
    /// Runs `kernel` on `grid` × `block` threads with `shmem` bytes of dynamic shared memory.
    /// Every pointer in `args` must cover what the kernel touches.
    pub fn launch(&self, kernel: &str, grid: Dim3, block: Dim3, shmem: usize, args: &[Arg]) {
        self.try_launch(kernel, grid, block, shmem, args)
            .unwrap_or_else(|why| panic!("{}: launching {kernel} failed: {why}", self.name));
    }

    /// [`Shim::launch`], or why the launch configuration was refused.
    pub fn try_launch(
        &self,
        kernel: &str,
        grid: Dim3,
        block: Dim3,
        shmem: usize,
        args: &[Arg],
    ) -> Result<(), String> {
        let mut ptrs: Vec<*mut c_void> = args.iter().map(Arg::addr).collect();
        // SAFETY: `emu_<kernel>` has the LaunchFn signature (EMU_EXPORT); `ptrs` holds one
        // address per kernel parameter, of the parameter's type, alive for the call (the caller
        // guarantees the buffers).
        let rc = unsafe {
            let f = self
                .lib
                .get::<LaunchFn>(format!("emu_{kernel}").as_bytes())
                .unwrap_or_else(|e| panic!("{}: no kernel {kernel}: {e}", self.name));
            f(grid, block, shmem, ptrs.as_mut_ptr())
        };
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: emu_last_error returns a NUL-terminated string owned by the library (this
        // thread's last refusal).
        Err(unsafe {
            let f = self.lib.get::<ErrorFn>(b"emu_last_error").unwrap();
            CStr::from_ptr(f()).to_string_lossy().into_owned()
        })
    }

    /// The launch of every elementwise kernel: grid (ceil(n / 256)), block (256), nothing when
    /// `n` is 0.
    pub fn launch_1d(&self, kernel: &str, n: usize, args: &[Arg]) {
        if n > 0 {
            self.launch(kernel, dim(n.div_ceil(256) as u32), dim(256), 0, args);
        }
    }
}

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Every source an emulated library depends on, as one hash.
fn sources_hash(h: &mut impl Hasher) {
    let root = kernels_dir();
    for dir in ["cuda", "tests/emu"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            f.file_name().hash(h);
            std::fs::read(&f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .hash(h);
        }
    }
}

/// The sanitizer the libraries are built with (`WEFT_EMU_SANITIZE`), if any.
pub fn sanitizer() -> Option<String> {
    std::env::var("WEFT_EMU_SANITIZE").ok().filter(|s| !s.is_empty())
}

/// Compiles `tests/emu/<name>.cpp` with the extra `defines`, once per process.
pub fn shim(name: &str, defines: &[&str]) -> &'static Shim {
    static SHIMS: OnceLock<Mutex<HashMap<String, &'static Shim>>> = OnceLock::new();
    let mut flags: Vec<String> = [
        "-std=c++20",
        "-pthread",
        "-DWEFT_EMU",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
    ]
    .map(String::from)
    .into();
    match sanitizer() {
        Some(s) => flags.extend([format!("-fsanitize={s}"), "-O1".into()]),
        None => flags.push("-O2".into()),
    }
    flags.push(format!("-I{}", kernels_dir().join("cuda").display()));
    flags.extend(defines.iter().map(|d| format!("-D{d}")));
    let key = format!("{name} {}", flags.join(" "));
    let mut shims = SHIMS.get_or_init(Default::default).lock().unwrap();
    if let Some(s) = shims.get(&key) {
        return s;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    let variant = format!("{name}-{:016x}-", h.finish());
    sources_hash(&mut h);
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("emu");
    std::fs::create_dir_all(&out_dir).unwrap();
    let file = format!("{variant}{:016x}.so", h.finish());
    let lib = out_dir.join(&file);
    if !lib.exists() {
        // Builds of this library from older sources.
        for e in std::fs::read_dir(&out_dir).unwrap().flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with(&variant) && f.ends_with(".so") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let src = kernels_dir().join("tests/emu").join(format!("{name}.cpp"));
        let tmp = lib.with_extension(format!("so.{}", std::process::id()));
        let out = Command::new("g++")
            .args(&flags)
            .args(["-shared", "-fPIC", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("g++ (needed to build the kernels' emulator): {e}"));
        assert!(
            out.status.success(),
            "g++ {} failed:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &lib).unwrap();
    }
    // SAFETY: the library is ours, built above; its initialisers only set up the emulator.
    let lib = unsafe { libloading::Library::new(&lib) }.unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    let s: &'static Shim = Box::leak(Box::new(Shim {
        name: name.to_string(),
        lib,
    }));
    shims.insert(key, s);
    s
}

/// Distance in units in the last place between two floats of one format, given as their bits
/// (`bits` wide): 0 for equal values (and for two NaNs), `u64::MAX` for a NaN against a number.
pub fn ulps(a: u64, b: u64, bits: u32) -> u64 {
    let sign = 1u64 << (bits - 1);
    let exp_mask = sign - (1u64 << (if bits == 32 { 23 } else { 7 }));
    let is_nan = |x: u64| (x & (sign - 1)) > exp_mask;
    if is_nan(a) || is_nan(b) {
        return if is_nan(a) && is_nan(b) { 0 } else { u64::MAX };
    }
    // Map to a line where adjacent floats are adjacent integers (-0 and +0 both at 0).
    let line = |x: u64| -> i64 {
        if x & sign != 0 {
            -((x & (sign - 1)) as i64)
        } else {
            x as i64
        }
    };
    line(a).abs_diff(line(b))
}

/// Fails unless every element of `got` is within `max_ulps` of `want` (both f32 or both bf16).
pub fn assert_close(what: &str, got: &HostVec, want: &HostVec, max_ulps: u64) {
    let (g, w, bits): (Vec<u64>, Vec<u64>, u32) = match (got, want) {
        (HostVec::F32(g), HostVec::F32(w)) => (
            g.iter().map(|x| x.to_bits() as u64).collect(),
            w.iter().map(|x| x.to_bits() as u64).collect(),
            32,
        ),
        (HostVec::BF16(g), HostVec::BF16(w)) => (
            g.iter().map(|x| x.to_bits() as u64).collect(),
            w.iter().map(|x| x.to_bits() as u64).collect(),
            16,
        ),
        _ => panic!("{what}: compare f32 with f32 or bf16 with bf16"),
    };
    assert_eq!(g.len(), w.len(), "{what}: lengths");
    let worst = (0..g.len()).max_by_key(|&i| ulps(g[i], w[i], bits));
    if let Some(i) = worst {
        let d = ulps(g[i], w[i], bits);
        assert!(
            d <= max_ulps,
            "{what}: element {i} of {}: emulated kernel {:?}, CPU {:?} ({d} ulps apart, at most {max_ulps} allowed)",
            g.len(),
            value(got, i),
            value(want, i),
        );
    }
}

fn value(v: &HostVec, i: usize) -> f64 {
    match v {
        HostVec::F32(x) => x[i] as f64,
        HostVec::BF16(x) => x[i].to_f64(),
        _ => unreachable!(),
    }
}

/// Sizes that are not multiples of the block: one element, one short of a block, one past it,
/// and a few blocks and a half.
pub const ODD_SIZES: [usize; 5] = [1, 255, 257, 1000, 3 * 256 + 131];

/// `x` as bf16 values (rounded to nearest even), the exact inputs both sides see.
pub fn bf16s(x: &[f64]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f64(v)).collect()
}
