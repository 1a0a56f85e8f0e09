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
    Norm,
    Modulation,
    Rope,
    Shape,
    Loss,
    Embed,
    Optim,
    Attention,
}

impl Module {
    /// Every module.
    pub(crate) const ALL: [Module; 11] = [
        Module::Elementwise,
        Module::Reduce,
        Module::Activation,
        Module::Norm,
        Module::Modulation,
        Module::Rope,
        Module::Shape,
        Module::Loss,
        Module::Embed,
        Module::Optim,
        Module::Attention,
    ];

    pub(crate) fn spec(self) -> &'static ModuleSpec {
        &SPECS[self as usize]
    }
}

/// The prelude every family includes.
const PRELUDE: Header = ("prelude.cuh", include_str!("../../cuda/prelude.cuh"));
const ATTENTION: [Header; 3] = [
    (
        "attention_common.cuh",
        include_str!("../../cuda/attention_common.cuh"),
    ),
    ("attention_f32.cuh", include_str!("../../cuda/attention_f32.cuh")),
    ("attention_tc.cuh", include_str!("../../cuda/attention_tc.cuh")),
];

/// The module table (indexed by [`Module`]).
pub(crate) static SPECS: [ModuleSpec; Module::ALL.len()] = [
    ModuleSpec {
        name: "elementwise",
        source: include_str!("../../cuda/elementwise.cu"),
        headers: &[PRELUDE],
        kernels: &[
            "add_f32",
            "add_bf16",
            "accumulate_f32",
            "accumulate_bf16",
            "accumulate_f32_bf16",
            "fill_f32",
            "fill_bf16",
            "scale_f32",
            "scale_bf16",
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
    ModuleSpec {
        name: "norm",
        source: include_str!("../../cuda/norm.cu"),
        headers: &[PRELUDE],
        kernels: &[
            "layernorm_forward_f32",
            "layernorm_forward_bf16",
            "layernorm_backward_f32",
            "layernorm_backward_bf16",
            "rmsnorm_forward_f32",
            "rmsnorm_forward_bf16",
            "rmsnorm_backward_f32",
            "rmsnorm_backward_bf16",
            "param_grad_sum_f32",
            "param_grad_sum_bf16_f32",
        ],
    },
    ModuleSpec {
        name: "modulation",
        source: include_str!("../../cuda/modulation.cu"),
        headers: &[PRELUDE],
        kernels: &[
            "modulate_forward_f32",
            "modulate_forward_bf16",
            "modulate_backward_f32",
            "modulate_backward_bf16",
            "gate_forward_f32",
            "gate_forward_bf16",
            "gate_backward_f32",
            "gate_backward_bf16",
            "cond_grad_sum_f32",
            "cond_grad_sum_bf16_f32",
        ],
    },
    ModuleSpec {
        name: "rope",
        source: include_str!("../../cuda/rope.cu"),
        headers: &[PRELUDE],
        kernels: &[
            "rope_forward_f32",
            "rope_forward_bf16",
            "rope_backward_f32",
            "rope_backward_bf16",
        ],
    },
    ModuleSpec {
        name: "shape",
        source: include_str!("../../cuda/shape.cu"),
        headers: &[PRELUDE],
        kernels: &["swap_axes_f32", "swap_axes_bf16"],
    },
    ModuleSpec {
        name: "loss",
        source: include_str!("../../cuda/loss.cu"),
        headers: &[PRELUDE],
        kernels: &[
            "cross_entropy_forward_f32",
            "cross_entropy_forward_bf16",
            "cross_entropy_backward_f32",
            "cross_entropy_backward_bf16",
            "mse_forward_partial_f32",
            "mse_forward_partial_bf16",
            "mse_forward_finish_f32",
            "mse_backward_f32",
            "mse_backward_bf16",
        ],
    },
    ModuleSpec {
        name: "embed",
        source: include_str!("../../cuda/embed.cu"),
        headers: &[PRELUDE],
        kernels: &[
            "embedding_forward_f32",
            "embedding_forward_bf16",
            "sort_keys_pack",
            "sort_keys_tile",
            "sort_keys_step",
            "sort_keys_merge",
            "embedding_backward_f32",
            "embedding_backward_bf16",
            "embedding_backward_f32_bf16",
            "patchify_forward_f32",
            "patchify_forward_bf16",
            "patchify_backward_f32",
            "patchify_backward_bf16",
            "unpatchify_forward_f32",
            "unpatchify_forward_bf16",
            "unpatchify_backward_f32",
            "unpatchify_backward_bf16",
            "timestep_embedding_forward_f32",
            "timestep_embedding_forward_bf16",
            "timestep_embedding_backward_f32",
            "timestep_embedding_backward_bf16",
        ],
    },
    ModuleSpec {
        name: "optim",
        source: include_str!("../../cuda/optim.cu"),
        headers: &[PRELUDE],
        kernels: &[
            "adamw_update_f32",
            "ademamix_update_f32",
            "sum_squares_partial_f32",
            "sum_squares_partial_bf16",
            "sum_squares_finish_f32",
            "sum_squares_finish_f64",
            "l2norm_forward_finish_f32",
            "l2norm_backward_f32",
            "sum_partial_f32",
            "sum_partial_bf16",
            "sum_finish_f32",
            "sum_finish_f64",
            "momentum_update_f32",
            "apply_direction_f32",
            "normalize_frobenius_f32",
            "normalize_rows_f32",
            "normalize_cols_f32",
            "normalize_sign_f32",
            "transpose_scaled_f32",
        ],
    },
    ModuleSpec {
        name: "attention",
        source: include_str!("../../cuda/attention.cu"),
        headers: &[PRELUDE, ATTENTION[0], ATTENTION[1], ATTENTION[2]],
        kernels: &[
            "attention_forward_f32",
            "attention_forward_bf16",
            "attention_backward_delta_f32",
            "attention_backward_delta_bf16",
            "attention_backward_dq_f32",
            "attention_backward_dq_bf16",
            "attention_backward_dkdv_f32",
            "attention_backward_dkdv_bf16",
            "attention_merge_f32",
            "attention_merge_bf16",
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

    /// The `extern "C"` kernels `source` defines, after the C preprocessor (g++ -E, which the
    /// emulated tests need too) has expanded the macros that stamp out dtype variants.
    fn defined_kernels(name: &str, source: &str) -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
        let out = std::process::Command::new("g++")
            .args(["-E", "-P", "-x", "c++", "-"])
            .arg(format!("-I{}", dir.display()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(source.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap_or_else(|e| panic!("g++ -E (the C preprocessor) for {name}.cu: {e}"));
        assert!(
            out.status.success(),
            "g++ -E {name}.cu: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut kernels = Vec::new();
        for piece in text.split("extern \"C\"").skip(1) {
            let Some(rest) = piece.trim_start().strip_prefix("__global__") else {
                continue;
            };
            let head = rest.split('(').collect::<Vec<_>>();
            // `void name(` or `void __launch_bounds__(128) name(`
            let decl = if head[0].contains("__launch_bounds__") {
                head[1].split(')').nth(1).unwrap_or_default()
            } else {
                head[0]
            };
            if let Some(k) = decl.split_whitespace().last() {
                kernels.push(k.to_string());
            }
        }
        kernels
    }

    #[test]
    fn every_listed_kernel_is_defined_in_its_source_and_every_kernel_is_listed() {
        for spec in &SPECS {
            let defined = defined_kernels(spec.name, spec.source);
            for k in spec.kernels {
                assert!(
                    defined.iter().any(|d| d == k),
                    "{}.cu defines no `extern \"C\" __global__` kernel `{k}` (it defines {defined:?})",
                    spec.name
                );
            }
            for d in &defined {
                assert!(
                    spec.kernels.contains(&d.as_str()),
                    "{}.cu defines `{d}`, which its ModuleSpec does not list in `kernels`",
                    spec.name
                );
            }
        }
    }
}
