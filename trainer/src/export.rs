//! Final weights as one safetensors file: every tensor of the layout under its name (f32),
//! and the run's config in the metadata (`weft.config`, TOML), so `weft sample` — or any
//! safetensors reader — can rebuild the model from the file alone.

use crate::config::ModelConfig;
use crate::data::tensorfile::Header;
use crate::{Config, Error, Layout, Result};
use safetensors::Dtype;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Write `params` (flat, in `layout` order) with `cfg` and `step` in the metadata; atomic
/// (temporary file, fsync, rename).
pub fn save(path: &Path, layout: &Layout, params: &[f32], cfg: &Config, step: u64) -> Result<()> {
    let bytes: Vec<Vec<u8>> = layout
        .entries
        .iter()
        .map(|e| params[e.range()].iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = layout
        .entries
        .iter()
        .zip(&bytes)
        .map(|(e, b)| {
            (
                e.name.clone(),
                safetensors::tensor::TensorView::new(Dtype::F32, e.shape.clone(), b).expect("sizes match"),
            )
        })
        .collect();
    let meta = HashMap::from([
        ("weft.config".to_string(), cfg.to_toml()),
        ("weft.step".to_string(), step.to_string()),
        ("format".to_string(), "pt".to_string()),
    ]);
    let data =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Other(format!("safetensors: {e}")))?;
    let tmp = path.with_extension("safetensors.tmp");
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&data)?;
            f.sync_all()
        })
        .map_err(Error::io(&tmp))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(Error::io(path)));
    if written.is_err() {
        // A full disk leaves nothing half-written behind.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Read a file written by [`save`]: its config, and the flat parameters for `layout_of(cfg)`.
///
/// Nothing in the file is trusted before it is checked: the header against the file's size
/// ([`Header::read`]), the embedded config by its own validation, the parameter count the
/// config implies against the bytes the file holds (so a config claiming a huge model is
/// refused before its layout is built), and every tensor of the layout for presence, dtype and
/// shape, all before the parameter vector is allocated.
pub fn load(path: &Path, layout_of: impl Fn(&Config) -> Layout) -> Result<(Config, Vec<f32>)> {
    let data = std::fs::read(path).map_err(Error::io(path))?;
    let h = Header::read(path, &data)?;
    let toml = h
        .metadata()
        .and_then(|m| m.get("weft.config"))
        .ok_or_else(|| Error::data(path, "no `weft.config` in the metadata (not written by weft)"))?;
    let cfg = Config::from_toml(toml)
        .map_err(|e| Error::data(path, format!("the embedded `weft.config` is invalid: {e}")))?;
    let values = data.len() / 4;
    match min_params(&cfg.model) {
        Some(n) if n <= values => {}
        n => {
            let n = n.map_or("more than 2^64".to_string(), |n| format!("at least {n}"));
            return Err(Error::data(
                path,
                format!(
                    "the embedded `weft.config` describes a model of {n} parameters \
                     (model.width = {}), but the file's {} bytes hold at most {values} f32 values",
                    cfg.width(),
                    data.len()
                ),
            ));
        }
    }
    let layout = layout_of(&cfg);
    let (mut total, mut sources) = (0usize, Vec::with_capacity(layout.entries.len()));
    for e in &layout.entries {
        let t = h.tensor(&e.name).ok_or_else(|| {
            Error::data(
                path,
                format!("missing tensor `{}` (model.width = {})", e.name, cfg.width()),
            )
        })?;
        if t.shape != e.shape || t.dtype != Dtype::F32 {
            return Err(Error::data(
                path,
                format!(
                    "tensor `{}` is {:?} {:?}, expected F32 {:?}",
                    e.name, t.dtype, t.shape, e.shape
                ),
            ));
        }
        total = total
            .checked_add(t.bytes.len())
            .filter(|&b| b <= data.len())
            .ok_or_else(|| Error::data(path, format!("tensor `{}` reaches past the file's end", e.name)))?;
        sources.push(t.bytes);
    }
    let (n, params) = (layout.len(), layout.params());
    if params.checked_mul(4) != Some(total) {
        return Err(Error::data(
            path,
            format!("the layout's {params} parameters do not match the tensors' {total} bytes"),
        ));
    }
    let mut flat = Vec::new();
    flat.try_reserve_exact(n).map_err(|_| {
        Error::data(
            path,
            format!("cannot allocate the parameter vector ({n} f32 values, {total} bytes)"),
        )
    })?;
    flat.resize(n, 0f32);
    for (e, bytes) in layout.entries.iter().zip(sources) {
        let (Some(src), Some(dst)) = (data.get(bytes), flat.get_mut(e.range())) else {
            return Err(Error::data(
                path,
                format!("tensor `{}` lies outside the file or layout", e.name),
            ));
        };
        for (d, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
            *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    Ok((cfg, flat))
}

/// A lower bound on the parameter count of `model`, from matrices every such model holds
/// (checked arithmetic; `None` when it overflows): per block the attention output projection
/// (width × width) and the MLP's output projection (width × hidden), and the input tables
/// (the DiT's patch embedding, class table and text projection; the GPT's token table). The
/// full layout is at most about 16 times this, so once the bound fits in the file's bytes
/// the layout can be built without overflow.
fn min_params(model: &ModelConfig) -> Option<usize> {
    let block = |c: usize, hidden: usize, depth: usize| {
        c.checked_mul(c)?
            .checked_add(c.checked_mul(hidden)?)?
            .checked_mul(depth)
    };
    match model {
        ModelConfig::Dit(m) => {
            let c = m.width;
            let hidden = (c as f64 * m.mlp_ratio).round();
            let hidden = (hidden < usize::MAX as f64).then_some(hidden as usize)?;
            let token_dim = m.patch.iter().try_fold(m.latent[3], |a, &p| a.checked_mul(p))?;
            let tables = token_dim
                .checked_add(m.num_classes.checked_add(1)?)?
                .checked_add(m.text_dim)?
                .checked_mul(c)?;
            block(c, hidden, m.depth)?.checked_add(tables)
        }
        ModelConfig::Gpt(m) => {
            let c = m.width;
            let hidden = match m.mlp_hidden {
                Some(h) => h,
                None => c.checked_mul(8)?.div_ceil(3),
            };
            block(c, hidden, m.depth)?.checked_add(m.vocab_size.checked_mul(c)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DitConfig, GptConfig};
    use crate::model::{Dit, Gpt};
    use weft_kernels::CpuBackend;

    #[test]
    fn the_parameter_bound_is_below_every_real_layout() {
        let gpt = |tie_embeddings: bool, mlp_hidden: Option<usize>, kv_heads: Option<usize>| GptConfig {
            width: 64,
            depth: 3,
            heads: 4,
            kv_heads,
            vocab_size: 300,
            seq_len: 8,
            mlp_hidden,
            tie_embeddings,
            z_loss: 0.0,
            rope_theta: 100.0,
            attn_base_hd: None,
        };
        let dit = |text_dim: usize, mlp_ratio: f64| DitConfig {
            width: 32,
            depth: 2,
            heads: 2,
            mlp_ratio,
            latent: [2, 4, 4, 3],
            patch: [1, 2, 2],
            num_classes: 5,
            text_dim,
            qk_norm: true,
            class_dropout: 0.0,
            rope_theta: 100.0,
            precondition: false,
            sigma_data: 0.5,
            t_mean: 0.0,
            t_std: 1.0,
            attn_base_hd: None,
        };
        let models = [
            ModelConfig::Gpt(gpt(true, None, None)),
            ModelConfig::Gpt(gpt(false, Some(40), Some(2))),
            ModelConfig::Dit(dit(0, 4.0)),
            ModelConfig::Dit(dit(7, 0.25)),
        ];
        for model in models {
            let layout = match &model {
                ModelConfig::Dit(m) => Dit::<CpuBackend>::layout_of(m),
                ModelConfig::Gpt(m) => Gpt::<CpuBackend>::layout_of(m),
            };
            let lb = min_params(&model).unwrap();
            assert!(
                lb <= layout.params() && layout.params() <= 16 * lb,
                "bound {lb}, layout {}",
                layout.len()
            );
        }
        let huge = GptConfig {
            width: 1 << 40,
            ..gpt(true, None, None)
        };
        assert_eq!(min_params(&ModelConfig::Gpt(huge)), None);
    }
}
