//! Final weights as one safetensors file: every tensor of the layout under its name (f32),
//! and the run's config in the metadata (`weft.config`, TOML), so `weft sample` — or any
//! safetensors reader — can rebuild the model from the file alone.

use crate::{Config, Error, Layout, Result};
use safetensors::{Dtype, SafeTensors};
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
    let mut f = std::fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(&data).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// Read a file written by [`save`]: its config, and the flat parameters for `layout_of(cfg)`.
pub fn load(path: &Path, layout_of: impl Fn(&Config) -> Layout) -> Result<(Config, Vec<f32>)> {
    let data = std::fs::read(path).map_err(Error::io(path))?;
    let (_, meta) = SafeTensors::read_metadata(&data)
        .map_err(|e| Error::data(path, format!("not a safetensors file: {e}")))?;
    let toml = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("weft.config"))
        .ok_or_else(|| Error::data(path, "no `weft.config` in the metadata (not written by weft)"))?;
    let cfg = Config::from_toml(toml)?;
    let layout = layout_of(&cfg);
    let st = SafeTensors::deserialize(&data).map_err(|e| Error::data(path, e.to_string()))?;
    let mut flat = vec![0f32; layout.len()];
    for e in &layout.entries {
        let t = st
            .tensor(&e.name)
            .map_err(|_| Error::data(path, format!("missing tensor `{}`", e.name)))?;
        if t.shape() != e.shape || t.dtype() != Dtype::F32 {
            return Err(Error::data(
                path,
                format!(
                    "`{}` is {:?} {:?}, expected F32 {:?}",
                    e.name,
                    t.dtype(),
                    t.shape(),
                    e.shape
                ),
            ));
        }
        for (d, b) in flat[e.range()].iter_mut().zip(t.data().chunks_exact(4)) {
            *d = f32::from_le_bytes(b.try_into().unwrap());
        }
    }
    Ok((cfg, flat))
}
