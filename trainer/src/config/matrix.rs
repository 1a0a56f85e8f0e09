//! `[optimizer.muon]` and `[optimizer.scion]`: the matrix-aware optimizers' settings.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Muon (`optimizer.kind = "muon"`): momentum, then Newton–Schulz orthogonalization of each
/// hidden matrix; embeddings, the read-out and vectors use AdamW with the same learning rate.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Muon {
    /// `m ← μ·m + g`.
    pub momentum: f64,
    /// Nesterov: the update direction is `g + μ·m` rather than `m`.
    pub nesterov: bool,
    /// Newton–Schulz iterations (quintic, coefficients 3.4445, −4.7750, 2.0315).
    pub ns_steps: usize,
    /// The orthogonalized update is scaled by `rms_match·√max(rows, cols)`, giving it about
    /// this RMS, AdamW's typical update RMS, so an AdamW learning rate carries over.
    pub rms_match: f64,
}

impl Default for Muon {
    fn default() -> Self {
        Muon {
            momentum: 0.95,
            nesterov: true,
            ns_steps: 5,
            rms_match: 0.2,
        }
    }
}

/// Scion (`optimizer.kind = "scion"`): `m ← μ·m + (1−μ)·g`, then a step along the linear
/// minimization oracle of a norm ball chosen per role: spectral for hidden matrices
/// (`√(d_out/d_in)·UVᵀ`), `colnorm`/`sign`/`spectral` for embeddings, `sign`/`rownorm`/
/// `spectral` for the read-out, RMS for vectors. Unconstrained: `p ← p − η·ρ·d`;
/// constrained: `p ← (1−η)·p − η·ρ·d`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Scion {
    pub momentum: f64,
    pub constrained: bool,
    pub ns_steps: usize,
    pub embedding: String,
    pub output: String,
    /// Radius `ρ` per role.
    pub radius_hidden: f64,
    pub radius_embedding: f64,
    pub radius_output: f64,
    pub radius_vector: f64,
}

impl Default for Scion {
    fn default() -> Self {
        Scion {
            momentum: 0.9,
            constrained: false,
            ns_steps: 5,
            embedding: "colnorm".into(),
            output: "sign".into(),
            radius_hidden: 1.0,
            radius_embedding: 1.0,
            radius_output: 1.0,
            radius_vector: 1.0,
        }
    }
}

fn unit(key: &str, v: f64) -> Result<()> {
    if (0.0..1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::config(key, format!("must be in [0, 1), got {v}")))
    }
}

fn steps(key: &str, v: usize) -> Result<()> {
    if (1..=20).contains(&v) {
        Ok(())
    } else {
        Err(Error::config(key, format!("must be in 1..=20, got {v}")))
    }
}

impl Muon {
    pub fn validate(&self) -> Result<()> {
        unit("optimizer.muon.momentum", self.momentum)?;
        steps("optimizer.muon.ns_steps", self.ns_steps)?;
        if !(self.rms_match > 0.0 && self.rms_match.is_finite()) {
            return Err(Error::config(
                "optimizer.muon.rms_match",
                format!("must be positive, got {}", self.rms_match),
            ));
        }
        Ok(())
    }
}

impl Scion {
    pub fn validate(&self) -> Result<()> {
        unit("optimizer.scion.momentum", self.momentum)?;
        steps("optimizer.scion.ns_steps", self.ns_steps)?;
        let one_of = |key: &str, v: &str, allowed: &[&str]| -> Result<()> {
            if allowed.contains(&v) {
                Ok(())
            } else {
                Err(Error::config(
                    key,
                    format!("must be one of {allowed:?}, got {v:?}"),
                ))
            }
        };
        one_of(
            "optimizer.scion.embedding",
            &self.embedding,
            &["colnorm", "sign", "spectral"],
        )?;
        one_of(
            "optimizer.scion.output",
            &self.output,
            &["sign", "rownorm", "spectral"],
        )?;
        for (key, v) in [
            ("optimizer.scion.radius_hidden", self.radius_hidden),
            ("optimizer.scion.radius_embedding", self.radius_embedding),
            ("optimizer.scion.radius_output", self.radius_output),
            ("optimizer.scion.radius_vector", self.radius_vector),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::config(key, format!("must be positive, got {v}")));
            }
        }
        Ok(())
    }
}
