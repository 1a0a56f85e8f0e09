//! `[mup]`: the maximal-update parametrization, so that hyper-parameters tuned at a small
//! width carry over to a large one.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The attention score scale for head dim `hd`: `1/√hd`, or under muP (`base`: the head dim
/// at the base width) `√base/hd`, which is `1/√hd` at the base width and falls as `1/hd`.
pub fn attn_scale(base: Option<usize>, hd: usize) -> f64 {
    let sp = 1.0 / (hd as f64).sqrt();
    match base {
        // √base/hd = (1/√hd)·√(base/hd), written so that it is exactly 1/√hd at the base.
        Some(b) => sp * (b as f64 / hd as f64).sqrt(),
        None => sp,
    }
}

/// muP against a base width (Yang et al., Tensor Programs V, Table 3, for Adam-type
/// optimizers), written relative to the base so that at `model.width = base_width` the model
/// and its updates are exactly the standard parametrization's. With width multiplier
/// `m = width / base_width`:
/// - hidden matrices: AdamW learning rate `× 1/m` (init `1/fan_in` as in SP);
/// - the read-out: init std `× 1/√m` (variance `∝ 1/fan_in²`), learning rate `× 1/m`, or
///   zero-initialized (`zero_readout`);
/// - embeddings and vectors: unchanged;
/// - attention logits scaled by `1/d` (`√d_base/d`) instead of `1/√d`.
///
/// Muon's and Scion's whole-matrix updates already scale with the shape (`√max(m, n)`,
/// `√(d_out/d_in)`, `1/d_in`), so they keep `lr` for the matrices they own; the AdamW-updated
/// entries under Muon follow the rules above.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Mup {
    pub enabled: bool,
    /// The width the hyper-parameters were tuned at.
    pub base_width: usize,
    /// Start the read-out at zero (the DiT's final layer always is: AdaLN-Zero).
    pub zero_readout: bool,
    /// The head dim at the base width, for the `√d_base/d` attention scale. 0: the base width
    /// over `model.heads` (heads fixed, head dim growing with width). Set it to the head dim
    /// when heads grow with width instead (as Llama-style families do): the scale is then
    /// the usual `1/√d`.
    pub base_head_dim: usize,
}

impl Default for Mup {
    fn default() -> Self {
        Mup {
            enabled: false,
            base_width: 64,
            zero_readout: false,
            base_head_dim: 0,
        }
    }
}

impl Mup {
    pub fn validate(&self, heads: usize) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if self.base_width == 0 || (self.base_head_dim == 0 && !self.base_width.is_multiple_of(heads)) {
            return Err(Error::config(
                "mup.base_width",
                format!(
                    "must be a positive multiple of model.heads ({heads}) unless mup.base_head_dim is set, got {}",
                    self.base_width
                ),
            ));
        }
        Ok(())
    }

    /// The head dim at the base width (see [`Mup::base_head_dim`]).
    pub fn base_hd(&self, heads: usize) -> usize {
        if self.base_head_dim > 0 {
            self.base_head_dim
        } else {
            self.base_width / heads
        }
    }

    /// The width multiplier `m` (1 when muP is off).
    pub fn multiplier(&self, width: usize) -> f64 {
        if self.enabled {
            width as f64 / self.base_width as f64
        } else {
            1.0
        }
    }
}

impl Mup {
    /// Set muP's per-role initialization and learning-rate factors on `layout` (a model of
    /// `width`, trained by optimizer `kind`); nothing when muP is off.
    pub fn apply(&self, layout: &mut crate::Layout, width: usize, kind: &str) {
        use crate::layout::Init;
        use crate::Role;
        if !self.enabled {
            return;
        }
        let m = self.multiplier(width);
        for e in &mut layout.entries {
            let matrix = e.shape.len() == 2;
            // Whole-matrix updates scale with the shape already: Scion owns every tensor,
            // Muon the hidden matrices.
            let owned = kind == "scion" || (kind == "muon" && e.role == Role::Hidden && matrix);
            match e.role {
                Role::Hidden if matrix && !owned => e.lr_scale = 1.0 / m,
                Role::Output => {
                    e.init = match e.init {
                        _ if self.zero_readout => Init::Zeros,
                        Init::Normal(std) => Init::Normal(std / m.sqrt()),
                        other => other,
                    };
                    if !owned {
                        e.lr_scale = 1.0 / m;
                    }
                }
                _ => {}
            }
        }
    }
}
