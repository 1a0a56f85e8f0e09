//! The kernel modules: one entry per `.cu` family, compiled by NVRTC for the device, cached on
//! disk ([`super::cache`]) and loaded once, on the first launch of one of its kernels.
//!
//! To add a family: write `kernels/cuda/<family>.cu`, add a [`Module`] variant and its
//! [`ModuleSpec`] in [`SPECS`] (source, the headers it includes, its kernels' names).

use super::cache::{DiskCache, KeyParts};
use super::nvrtc::{self, Target};
use crate::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::Ptx;
use std::sync::{Arc, Mutex, OnceLock};

/// One header a module's source includes: NVRTC resolves `#include "<name>"` to `text`.
pub(crate) type Header = (&'static str, &'static str);

/// One NVRTC module: a `.cu` family.
#[derive(Debug)]
pub(crate) struct ModuleSpec {
    /// The family (`elementwise`); the file is `kernels/cuda/<name>.cu`.
    pub name: &'static str,
    pub source: &'static str,
    /// Every header the source includes (directly or through another header).
    pub headers: &'static [Header],
    /// The `extern "C"` kernels looked up when the module is loaded.
    pub kernels: &'static [&'static str],
}

/// The modules, in the order of [`SPECS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Module {
    Elementwise,
    Reduce,
    Activation,
}

impl Module {
    /// Every module.
    pub(crate) const ALL: [Module; 3] = [Module::Elementwise, Module::Reduce, Module::Activation];

    pub(crate) fn spec(self) -> &'static ModuleSpec {
        &SPECS[self as usize]
    }
}

/// The prelude every family includes.
const PRELUDE: Header = ("prelude.cuh", include_str!("../../cuda/prelude.cuh"));

/// The module table (indexed by [`Module`]).
pub(crate) static SPECS: [ModuleSpec; Module::ALL.len()] = [
    ModuleSpec {
        name: "elementwise",
        source: include_str!("../../cuda/elementwise.cu"),
        headers: &[PRELUDE],
        kernels: &[
            "add_f32",
            "accumulate_f32",
            "scale_f32",
            "fill_f32",
            "cast_f32_bf16",
            "cast_bf16_f32",
            "bias_add_f32",
        ],
    },
    ModuleSpec {
        name: "reduce",
        source: include_str!("../../cuda/reduce.cu"),
        headers: &[],
        kernels: &[
            "bias_grad_partial_f32",
            "bias_grad_partial_bf16",
            "bias_grad_finish_f32",
            "bias_grad_finish_bf16",
        ],
    },
    ModuleSpec {
        name: "activation",
        source: include_str!("../../cuda/activation.cu"),
        headers: &[PRELUDE],
        kernels: &[
            "gelu_forward_f32",
            "gelu_forward_bf16",
            "gelu_backward_f32",
            "gelu_backward_bf16",
            "silu_forward_f32",
            "silu_forward_bf16",
            "silu_backward_f32",
            "silu_backward_bf16",
            "swiglu_forward_f32",
            "swiglu_forward_bf16",
            "swiglu_backward_f32",
            "swiglu_backward_bf16",
        ],
    },
];

/// A loaded module and its kernels.
pub(crate) struct Loaded {
    _module: Arc<CudaModule>,
    functions: Vec<(&'static str, CudaFunction)>,
}

impl Loaded {
    fn function(&self, module: &str, name: &str) -> Result<&CudaFunction> {
        self.functions
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f)
            .ok_or_else(|| Error::Cuda {
                op: "kernel lookup",
                msg: format!("{module}.cu lists no kernel `{name}`"),
            })
    }
}

/// Where each module comes from and, once loaded, the module itself.
pub(crate) struct Modules {
    target: Target,
    nvrtc: (i32, i32),
    cache: Option<DiskCache>,
    slots: [OnceLock<Loaded>; Module::ALL.len()],
    /// Serialises first loads, so two threads never compile the same module twice.
    loading: Mutex<()>,
}

impl Modules {
    /// Modules for a device of compute capability `cc`, compiled with the loaded NVRTC and
    /// cached in `cache` (none: compile on every first use).
    pub(crate) fn new(cc: (i32, i32), cache: Option<DiskCache>) -> Result<Self> {
        let nvrtc = nvrtc::version()?;
        let target = nvrtc::choose_target(cc, &nvrtc::supported_archs()?)?;
        Ok(Modules {
            target,
            nvrtc,
            cache,
            slots: Default::default(),
            loading: Mutex::new(()),
        })
    }

    /// The disk cache's directory (`None`: compiled on every first use).
    pub(crate) fn cache_dir(&self) -> Option<&std::path::Path> {
        self.cache.as_ref().map(DiskCache::dir)
    }

    /// What NVRTC compiles for (`sm_90` cubin, or PTX where it cannot target the device).
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Kernel `name` of module `m`, loading the module on first use.
    pub(crate) fn function(&self, ctx: &Arc<CudaContext>, m: Module, name: &str) -> Result<&CudaFunction> {
        self.get(ctx, m)?.function(m.spec().name, name)
    }

    fn get(&self, ctx: &Arc<CudaContext>, m: Module) -> Result<&Loaded> {
        let slot = &self.slots[m as usize];
        if let Some(l) = slot.get() {
            return Ok(l);
        }
        let _guard = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = slot.get() {
            return Ok(l);
        }
        let loaded = self.load(ctx, m.spec())?;
        Ok(slot.get_or_init(|| loaded))
    }

    /// The compiled image of `spec`: from the disk cache, or compiled and stored.
    fn image(&self, spec: &ModuleSpec) -> Result<Vec<u8>> {
        let parts = KeyParts {
            module: spec.name,
            source: spec.source,
            headers: spec.headers,
            arch: &self.target.arch,
            nvrtc: self.nvrtc,
            options: nvrtc::OPTIONS,
        };
        if let Some(image) = self.cache.as_ref().and_then(|c| c.load(&parts)) {
            return Ok(image);
        }
        let image = nvrtc::compile(spec.name, spec.source, spec.headers, &self.target)?;
        if let Some(c) = &self.cache {
            // Best effort: a read-only or full disk only costs a compile next time.
            let _ = c.store(&parts, &image);
        }
        Ok(image)
    }

    fn load(&self, ctx: &Arc<CudaContext>, spec: &ModuleSpec) -> Result<Loaded> {
        let image = self.image(spec)?;
        let module = ctx
            .load_module(Ptx::from_binary(image))
            .map_err(|e| Error::Cuda {
                op: "load module",
                msg: format!("{}.cu ({}): {e}", spec.name, self.target.arch),
            })?;
        let functions = spec
            .kernels
            .iter()
            .map(|&k| {
                module.load_function(k).map(|f| (k, f)).map_err(|e| Error::Cuda {
                    op: "load function",
                    msg: format!("{}.cu: `{k}`: {e}", spec.name),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Loaded {
            _module: module,
            functions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in every `#include "..."` line of `text`.
    fn includes(text: &str) -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix("#include"))
            .filter_map(|rest| rest.trim().strip_prefix('"')?.split('"').next())
            .collect()
    }

    #[test]
    fn the_table_is_indexed_by_module() {
        assert_eq!(SPECS.len(), Module::ALL.len());
        for (i, m) in Module::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
            assert_eq!(m.spec().name, SPECS[i].name);
        }
        assert_eq!(Module::Reduce.spec().name, "reduce");
    }

    #[test]
    fn every_include_is_a_listed_header() {
        for spec in &SPECS {
            let mut texts = vec![spec.source];
            texts.extend(spec.headers.iter().map(|(_, t)| *t));
            for text in texts {
                for inc in includes(text) {
                    assert!(
                        spec.headers.iter().any(|(n, _)| *n == inc),
                        "{}.cu includes \"{inc}\", which its ModuleSpec does not list in `headers`",
                        spec.name
                    );
                }
            }
        }
        assert_eq!(
            includes("#include \"prelude.cuh\"\n  #include \"a.h\" // x\n"),
            ["prelude.cuh", "a.h"]
        );
    }

    #[test]
    fn every_listed_kernel_is_defined_in_its_source() {
        for spec in &SPECS {
            for k in spec.kernels {
                let defined = spec.source.lines().any(|l| {
                    l.contains("extern \"C\"")
                        && l.contains("__global__")
                        && l.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                            .any(|w| w == *k)
                });
                assert!(
                    defined,
                    "{}.cu defines no `extern \"C\" __global__` kernel `{k}`",
                    spec.name
                );
            }
        }
    }
}
