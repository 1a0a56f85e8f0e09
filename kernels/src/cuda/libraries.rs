//! The CUDA libraries this build binds, checked before any use: present (cudarc would panic
//! on a missing one) and of the build's CUDA major version.

use crate::{Error, Result};

/// Refuse early, with a message a user can act on, when a CUDA library is missing
/// (cudarc would panic on first use).
pub(crate) fn probe() -> Result<()> {
    // SAFETY: these only try to dlopen the libraries.
    let (driver, lt, nvrtc) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublaslt::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    let missing = |what: &str, lib: &str, fix: &str| {
        Error::CudaUnavailable(format!("{what} ({lib}) was not found; {fix}"))
    };
    if !driver {
        return Err(missing(
            "the NVIDIA driver",
            "libcuda.so",
            "this machine has no NVIDIA GPU driver installed",
        ));
    }
    if !lt {
        return Err(missing(
            "cuBLASLt",
            "libcublasLt.so",
            "install the CUDA toolkit libraries or add them to LD_LIBRARY_PATH",
        ));
    }
    if !nvrtc {
        return Err(missing(
            "NVRTC",
            "libnvrtc.so",
            "install the CUDA toolkit libraries or add them to LD_LIBRARY_PATH",
        ));
    }
    Ok(())
}

/// The CUDA major version this build binds (feature `cuda-13` or `cuda-12`).
const BUILT_FOR: u32 = if cfg!(feature = "cuda-13") { 13 } else { 12 };

/// Refuse a library of another CUDA major version than the build's: the loader also finds
/// `libX.so.12` from a CUDA 13 build, whose bindings would not match it.
fn check_major(lib: &str, found: u32, built: u32) -> Result<()> {
    if found == built {
        return Ok(());
    }
    let fix = match found {
        13 => "rebuild weft with `--features cuda`, or ".to_string(),
        12 => "rebuild weft with `--features cuda-12`, or ".to_string(),
        _ => String::new(),
    };
    Err(Error::CudaUnavailable(format!(
        "{lib} is from CUDA {found}.x but this weft was built for CUDA {built}.x; {fix}put the CUDA \
         {built}.x libraries first on LD_LIBRARY_PATH"
    )))
}

/// The loaded NVRTC and cuBLASLt must be of the build's CUDA major version.
pub(crate) fn check_versions() -> Result<()> {
    let (nvrtc_major, _) = super::nvrtc::version()?;
    check_major("libnvrtc", nvrtc_major as u32, BUILT_FOR)?;
    // SAFETY: a plain query of the loaded library (major · 10000 + minor · 100 + patch).
    let lt = unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() };
    check_major("libcublasLt", (lt / 10000) as u32, BUILT_FOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_of_another_cuda_major_version_is_refused_with_the_fix() {
        assert!(check_major("libnvrtc", 13, 13).is_ok());
        assert!(check_major("libnvrtc", 12, 12).is_ok());
        let e = check_major("libcublasLt", 12, 13).unwrap_err().to_string();
        assert!(
            e.contains("libcublasLt is from CUDA 12.x but this weft was built for CUDA 13.x"),
            "{e}"
        );
        assert!(e.contains("`--features cuda-12`"), "{e}");
        let e = check_major("libnvrtc", 13, 12).unwrap_err().to_string();
        assert!(
            e.contains("`--features cuda`") && e.contains("CUDA 12.x libraries first"),
            "{e}"
        );
        let e = check_major("libnvrtc", 11, 12).unwrap_err().to_string();
        assert!(!e.contains("--features") && e.contains("CUDA 11.x"), "{e}");
        assert_eq!(BUILT_FOR, if cfg!(feature = "cuda-13") { 13 } else { 12 });
    }
}
