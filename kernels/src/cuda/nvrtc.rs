//! NVRTC: one module's source, with its headers passed by include name, compiled for the
//! device's own architecture.
//!
//! The target is a cubin for `sm_XY`, the device's compute capability, so the driver loads
//! machine code and never JIT-compiles PTX (whose version would need a driver at least as new
//! as the NVRTC that wrote it). Only where this NVRTC cannot target the device (a device newer
//! than the library) is the output PTX, for the newest architecture NVRTC knows below the
//! device's, which the driver compiles forward.

use crate::{Error, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, c_int, CString};

/// Options every module is compiled with (also part of the cache key).
pub(crate) const OPTIONS: &[&str] = &["--std=c++17"];

/// What NVRTC is asked to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// `sm_90` (cubin) or `compute_90` (PTX).
    pub arch: String,
    /// Whether the output is a cubin (else PTX).
    pub cubin: bool,
}

/// `sm_XY` for compute capability `X.Y` (`sm_90`, `sm_100`, `sm_86`).
pub(crate) fn arch_name(major: i32, minor: i32) -> String {
    format!("sm_{}", major * 10 + minor)
}

/// The target for a device of compute capability `(major, minor)`, given the architectures
/// this NVRTC supports (as `major * 10 + minor`, e.g. 90).
pub(crate) fn choose_target(device: (i32, i32), supported: &[i32]) -> Result<Target> {
    let cc = device.0 * 10 + device.1;
    if supported.contains(&cc) {
        return Ok(Target {
            arch: arch_name(device.0, device.1),
            cubin: true,
        });
    }
    match supported.iter().copied().filter(|&s| s < cc).max() {
        Some(s) => Ok(Target {
            arch: format!("compute_{s}"),
            cubin: false,
        }),
        None => Err(Error::CudaUnavailable(format!(
            "the GPU is sm_{cc}, older than every architecture this NVRTC supports ({})",
            supported
                .iter()
                .map(|s| format!("sm_{s}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn nvrtc_err(what: &'static str) -> impl Fn(result::NvrtcError) -> Error {
    move |e| Error::Cuda {
        op: "nvrtc",
        msg: format!("{what}: {e}"),
    }
}

/// `(major, minor)` of the loaded NVRTC library.
pub(crate) fn version() -> Result<(i32, i32)> {
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: two valid out-pointers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(nvrtc_err("nvrtcVersion"))?;
    Ok((major, minor))
}

/// The architectures this NVRTC can compile for (`major * 10 + minor`).
pub(crate) fn supported_archs() -> Result<Vec<i32>> {
    let mut n: c_int = 0;
    // SAFETY: a valid out-pointer.
    unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(nvrtc_err("nvrtcGetNumSupportedArchs"))?;
    let mut archs = vec![0 as c_int; n.max(0) as usize];
    // SAFETY: `archs` holds the count NVRTC just reported.
    unsafe { sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(nvrtc_err("nvrtcGetSupportedArchs"))?;
    Ok(archs)
}

/// An NVRTC program, destroyed on every path.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram, destroyed once.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn c_string(what: &str, text: &str) -> Result<CString> {
    CString::new(text).map_err(|_| Error::Cuda {
        op: "nvrtc",
        msg: format!("{what} contains a NUL byte"),
    })
}

/// Compile `source` (module `name`) with `headers` (`(include name, text)`, resolved by NVRTC
/// for `#include "name"`) for `target`. Returns the cubin, or NUL-terminated PTX. A compile
/// error carries NVRTC's log.
pub(crate) fn compile(
    name: &str,
    source: &str,
    headers: &[(&str, &str)],
    target: &Target,
) -> Result<Vec<u8>> {
    let file = format!("{name}.cu");
    let src = c_string(&file, source)?;
    let file_c = c_string("the module name", &file)?;
    let texts = headers
        .iter()
        .map(|(h, t)| c_string(h, t))
        .collect::<Result<Vec<_>>>()?;
    let names = headers
        .iter()
        .map(|(h, _)| c_string("a header name", h))
        .collect::<Result<Vec<_>>>()?;
    let text_ptrs: Vec<*const c_char> = texts.iter().map(|c| c.as_ptr()).collect();
    let name_ptrs: Vec<*const c_char> = names.iter().map(|c| c.as_ptr()).collect();
    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is a NUL-terminated string alive for this call (NVRTC copies
    // them); the two arrays have `headers.len()` entries.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            src.as_ptr(),
            file_c.as_ptr(),
            headers.len() as c_int,
            text_ptrs.as_ptr(),
            name_ptrs.as_ptr(),
        )
    }
    .result()
    .map_err(nvrtc_err("nvrtcCreateProgram"))?;
    let prog = Program(raw);
    let mut options: Vec<String> = OPTIONS.iter().map(|o| o.to_string()).collect();
    options.push(format!("--gpu-architecture={}", target.arch));
    // SAFETY: `prog` is a live program; the options contain no NUL.
    if let Err(e) = unsafe { result::compile_program(prog.0, &options) } {
        // SAFETY: as above.
        let log = unsafe { result::get_program_log(prog.0) }.unwrap_or_default();
        let log: Vec<u8> = log.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        return Err(Error::Cuda {
            op: "nvrtc compile",
            msg: format!(
                "{file} for {} ({e}):\n{}",
                target.arch,
                String::from_utf8_lossy(&log).trim_end()
            ),
        });
    }
    if target.cubin {
        let mut size = 0usize;
        // SAFETY: `prog` compiled successfully for a real architecture; `out` has `size` bytes.
        unsafe {
            sys::nvrtcGetCUBINSize(prog.0, &mut size)
                .result()
                .map_err(nvrtc_err("nvrtcGetCUBINSize"))?;
            let mut out = vec![0u8; size];
            sys::nvrtcGetCUBIN(prog.0, out.as_mut_ptr().cast())
                .result()
                .map_err(nvrtc_err("nvrtcGetCUBIN"))?;
            Ok(out)
        }
    } else {
        // SAFETY: `prog` compiled successfully; the PTX comes back NUL-terminated.
        let ptx = unsafe { result::get_ptx(prog.0) }.map_err(nvrtc_err("nvrtcGetPTX"))?;
        Ok(ptx.into_iter().map(|c| c as u8).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arch_string_is_the_compute_capability() {
        assert_eq!(arch_name(9, 0), "sm_90");
        assert_eq!(arch_name(8, 0), "sm_80");
        assert_eq!(arch_name(8, 6), "sm_86");
        assert_eq!(arch_name(10, 0), "sm_100");
        assert_eq!(arch_name(12, 0), "sm_120");
    }

    #[test]
    fn the_target_is_a_cubin_for_the_device_when_nvrtc_knows_it() {
        let supported = [75, 80, 86, 87, 89, 90, 100, 120];
        let t = choose_target((9, 0), &supported).unwrap();
        assert_eq!(
            t,
            Target {
                arch: "sm_90".into(),
                cubin: true
            }
        );
        let t = choose_target((8, 0), &supported).unwrap();
        assert_eq!(
            t,
            Target {
                arch: "sm_80".into(),
                cubin: true
            }
        );
        // A device newer than this NVRTC: PTX for the newest architecture below it.
        let t = choose_target((10, 3), &[80, 90, 100]).unwrap();
        assert_eq!(
            t,
            Target {
                arch: "compute_100".into(),
                cubin: false
            }
        );
        let t = choose_target((12, 0), &[80, 90]).unwrap();
        assert_eq!(
            t,
            Target {
                arch: "compute_90".into(),
                cubin: false
            }
        );
        // Older than everything NVRTC supports: a clear error naming both.
        let e = choose_target((6, 0), &[75, 80]).unwrap_err().to_string();
        assert!(e.contains("sm_60") && e.contains("sm_75, sm_80"), "{e}");
    }

    /// Whether this machine has NVRTC (the `nvidia-cuda-nvrtc` wheel on `LD_LIBRARY_PATH` is
    /// enough: NVRTC needs no driver and no GPU).
    fn nvrtc_present() -> bool {
        // SAFETY: only tries to dlopen the library.
        let present = unsafe { sys::is_culib_present() };
        if !present {
            eprintln!("NVRTC not found: add the nvidia-cuda-nvrtc wheel's lib/ to LD_LIBRARY_PATH");
        }
        present
    }

    #[test]
    fn every_module_compiles_to_a_cubin_for_sm_80_and_sm_90() {
        if !nvrtc_present() {
            return;
        }
        let (major, _) = version().unwrap();
        assert!(major >= 12, "NVRTC {major}");
        let archs = supported_archs().unwrap();
        assert!(archs.contains(&80) && archs.contains(&90), "{archs:?}");
        for spec in &crate::cuda::modules::SPECS {
            for cc in [(8, 0), (9, 0)] {
                let target = choose_target(cc, &archs).unwrap();
                assert!(target.cubin);
                let image = compile(spec.name, spec.source, spec.headers, &target).unwrap();
                assert_eq!(
                    &image[..4],
                    b"\x7fELF",
                    "{}.cu for {}: not a cubin",
                    spec.name,
                    target.arch
                );
            }
        }
    }

    #[test]
    fn headers_are_passed_by_name_and_a_compile_error_carries_the_log() {
        if !nvrtc_present() {
            return;
        }
        let src =
            "#include \"twice.cuh\"\nextern \"C\" __global__ void k(float* x) { x[0] = twice(x[0]); }\n";
        let header = (
            "twice.cuh",
            "__device__ float twice(float v) { return 2.0f * v; }\n",
        );
        let sm90 = Target {
            arch: "sm_90".into(),
            cubin: true,
        };
        let cubin = compile("t", src, &[header], &sm90).unwrap();
        assert_eq!(&cubin[..4], b"\x7fELF");
        let ptx = compile(
            "t",
            src,
            &[header],
            &Target {
                arch: "compute_90".into(),
                cubin: false,
            },
        )
        .unwrap();
        let text = String::from_utf8_lossy(&ptx);
        assert!(
            text.contains(".target sm_90") && text.contains(".entry k"),
            "{text}"
        );
        assert_eq!(ptx.last(), Some(&0), "PTX is NUL-terminated for the driver");
        let e = compile("t", src, &[], &sm90).unwrap_err().to_string();
        assert!(e.contains("t.cu for sm_90") && e.contains("twice.cuh"), "{e}");
    }
}
