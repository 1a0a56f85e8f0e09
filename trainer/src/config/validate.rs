//! The rules of a config that span several keys (heads dividing the width, patches dividing
//! the latent, the mesh dividing the model, sizes within bounds), each error naming the key
//! and the rule it broke.

use super::*;

impl Config {
    /// Rules that span several keys. Each error names the key and the rule it broke.
    pub fn validate(&self) -> Result<()> {
        let pos = |key: &str, v: usize| -> Result<()> {
            if v == 0 {
                Err(Error::config(key, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        let unit = |key: &str, v: f64, lo: f64, hi: f64| -> Result<()> {
            if !(lo..=hi).contains(&v) || !v.is_finite() {
                Err(Error::config(key, format!("must be in [{lo}, {hi}], got {v}")))
            } else {
                Ok(())
            }
        };
        if self.job.name.is_empty() || self.job.name.contains(['/', '\\']) {
            return Err(Error::config(
                "job.name",
                "must be a non-empty name without slashes",
            ));
        }
        match &self.model {
            ModelConfig::Dit(m) => {
                for (k, v) in [
                    ("model.width", m.width),
                    ("model.depth", m.depth),
                    ("model.heads", m.heads),
                    ("model.num_classes", m.num_classes),
                    ("model.text_dim", m.text_dim),
                ]
                .into_iter()
                .chain((0..4).map(|i| ("model.latent", m.latent[i])))
                .chain((0..3).map(|i| ("model.patch", m.patch[i])))
                {
                    at_most(k, v, MAX_SIZE)?;
                }
                pos("model.width", m.width)?;
                pos("model.depth", m.depth)?;
                pos("model.heads", m.heads)?;
                pos("model.num_classes", m.num_classes)?;
                divides("model.heads", m.heads, "model.width", m.width)?;
                let hd = m.width / m.heads;
                if !hd.is_multiple_of(2) {
                    return Err(Error::config(
                        "model.heads",
                        format!("gives head dim {hd} (width/heads); 3D RoPE needs an even head dim"),
                    ));
                }
                for (i, name) in ["T", "H", "W"].into_iter().enumerate() {
                    pos(&format!("model.latent[{i}]"), m.latent[i])?;
                    pos(&format!("model.patch[{i}]"), m.patch[i])?;
                    if !m.latent[i].is_multiple_of(m.patch[i]) {
                        return Err(Error::config(
                            format!("model.patch[{i}]"),
                            format!(
                                "must divide the latent extent {name}={} (patch {})",
                                m.latent[i], m.patch[i]
                            ),
                        ));
                    }
                }
                pos("model.latent[3]", m.latent[3])?;
                unit("model.mlp_ratio", m.mlp_ratio, 0.25, 64.0)?;
                unit("model.class_dropout", m.class_dropout, 0.0, 1.0)?;
                unit("model.t_std", m.t_std, 0.0, 10.0)?;
                unit("model.sigma_data", m.sigma_data, 1e-6, 1e6)?;
                if matches!(self.data, DataConfig::Tokens(_)) {
                    return Err(Error::config(
                        "data.kind",
                        "`tokens` feeds a GPT; a DiT reads `shapes` or `latents`",
                    ));
                }
            }
            ModelConfig::Gpt(m) => {
                for (k, v) in [
                    ("model.width", m.width),
                    ("model.depth", m.depth),
                    ("model.heads", m.heads),
                    ("model.kv_heads", m.kv_heads.unwrap_or(0)),
                    ("model.vocab_size", m.vocab_size),
                    ("model.seq_len", m.seq_len),
                    ("model.mlp_hidden", m.mlp_hidden.unwrap_or(0)),
                ] {
                    at_most(k, v, MAX_SIZE)?;
                }
                pos("model.width", m.width)?;
                pos("model.depth", m.depth)?;
                pos("model.heads", m.heads)?;
                pos("model.vocab_size", m.vocab_size)?;
                pos("model.seq_len", m.seq_len)?;
                divides("model.heads", m.heads, "model.width", m.width)?;
                let kv = m.kv_heads.unwrap_or(m.heads);
                pos("model.kv_heads", kv)?;
                divides("model.kv_heads", kv, "model.heads", m.heads)?;
                if !(m.width / m.heads).is_multiple_of(2) {
                    return Err(Error::config(
                        "model.heads",
                        "gives an odd head dim; RoPE needs an even one",
                    ));
                }
                if let Some(h) = m.mlp_hidden {
                    pos("model.mlp_hidden", h)?;
                }
                unit("model.z_loss", m.z_loss, 0.0, 1.0)?;
                if !matches!(self.data, DataConfig::Tokens(_)) {
                    return Err(Error::config("data.kind", "a GPT reads `tokens`"));
                }
            }
        }
        match &self.data {
            DataConfig::Shapes => {
                if let ModelConfig::Dit(m) = &self.model {
                    if m.latent[3] != 3 {
                        return Err(Error::config(
                            "model.latent[3]",
                            "must be 3 (RGB) for data.kind = \"shapes\"",
                        ));
                    }
                    if m.num_classes != crate::data::shapes::NUM_CLASSES {
                        return Err(Error::config(
                            "model.num_classes",
                            format!(
                                "must be {} for data.kind = \"shapes\"",
                                crate::data::shapes::NUM_CLASSES
                            ),
                        ));
                    }
                }
            }
            DataConfig::Latents(f) | DataConfig::Tokens(f) => {
                unit("data.val_fraction", f.val_fraction, 0.0, 0.5)?
            }
        }
        let t = &self.training;
        for (k, v) in [
            ("training.micro_batch", t.micro_batch),
            ("training.grad_accum", t.grad_accum),
            ("training.val_batches", t.val_batches),
        ] {
            at_most(k, v, MAX_SIZE)?;
        }
        pos("training.steps", t.steps as usize)?;
        pos("training.micro_batch", t.micro_batch)?;
        pos("training.grad_accum", t.grad_accum)?;
        pos("training.val_batches", t.val_batches)?;
        if !["f32", "f64"].contains(&t.dtype.as_str()) {
            return Err(Error::config(
                "training.dtype",
                format!("must be \"f32\" or \"f64\", got {:?}", t.dtype),
            ));
        }
        for (key, v) in [
            ("training.param_dtype", &t.param_dtype),
            ("training.reduce_dtype", &t.reduce_dtype),
        ] {
            if let Some(v) = v {
                if v != &t.dtype && !(v == "bf16" && t.dtype == "f32") {
                    return Err(Error::config(
                        key,
                        format!(
                            "must be \"bf16\" (over f32 masters) or the master dtype \"{}\" \
                             (training.dtype), got {v:?}",
                            t.dtype
                        ),
                    ));
                }
            }
        }
        if let Err(rule) = t.device.parse::<crate::device::Device>() {
            return Err(Error::config("training.device", rule));
        }
        if let Some(p) = t.peak_flops {
            if !(p > 0.0 && p.is_finite()) {
                return Err(Error::config(
                    "training.peak_flops",
                    "must be a positive FLOP/s figure",
                ));
            }
        }
        let o = &self.optimizer;
        if !["adamw", "ademamix", "muon", "scion"].contains(&o.kind.as_str()) {
            return Err(Error::config(
                "optimizer.kind",
                format!(
                    "must be \"adamw\", \"ademamix\", \"muon\" or \"scion\", got {:?}",
                    o.kind
                ),
            ));
        }
        o.muon.validate()?;
        o.scion.validate()?;
        if !(0.0..1.0).contains(&o.beta3) || o.beta3 < o.beta1 {
            return Err(Error::config(
                "optimizer.beta3",
                format!("must be in [optimizer.beta1, 1), got {}", o.beta3),
            ));
        }
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return Err(Error::config(
                "optimizer.lr",
                format!("must be positive, got {}", o.lr),
            ));
        }
        unit("optimizer.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0)?;
        unit("optimizer.beta1", o.beta1, 0.0, 0.999999)?;
        unit("optimizer.beta2", o.beta2, 0.0, 0.999999)?;
        unit("optimizer.eps", o.eps, 0.0, 1.0)?;
        unit("optimizer.weight_decay", o.weight_decay, 0.0, 1.0)?;
        unit("optimizer.grad_clip", o.grad_clip, 0.0, 1e9)?;
        unit("optimizer.decay_fraction", o.decay_fraction, 0.0, 1.0)?;
        if !["cosine", "wsd", "constant"].contains(&o.schedule.as_str()) {
            return Err(Error::config(
                "optimizer.schedule",
                format!(
                    "must be \"cosine\", \"wsd\" or \"constant\", got {:?}",
                    o.schedule
                ),
            ));
        }
        if o.warmup_steps > t.steps {
            return Err(Error::config(
                "optimizer.warmup_steps",
                format!(
                    "({}) must not exceed training.steps ({})",
                    o.warmup_steps, t.steps
                ),
            ));
        }
        let p = &self.parallel;
        for (k, v) in [
            ("parallel.dp_replicate", p.dp_replicate),
            ("parallel.dp_shard", p.dp_shard),
            ("parallel.cp", p.cp),
            ("parallel.tp", p.tp),
            ("parallel.ulysses", p.ulysses),
        ] {
            pos(k, v)?;
            at_most(k, v, MAX_RANKS)?;
        }
        let ranks = [p.dp_shard, p.cp, p.tp]
            .iter()
            .try_fold(p.dp_replicate, |a, &b| a.checked_mul(b))
            .filter(|&n| n <= MAX_RANKS);
        if ranks.is_none() {
            return Err(Error::config(
                "parallel",
                format!("dp_replicate × dp_shard × cp × tp must be at most {MAX_RANKS} ranks"),
            ));
        }
        let heads = match &self.model {
            ModelConfig::Dit(m) => (m.heads, m.heads),
            ModelConfig::Gpt(m) => (m.heads, m.kv_heads.unwrap_or(m.heads)),
        };
        divides("parallel.tp", p.tp, "model.heads", heads.0)?;
        divides("parallel.tp", p.tp, "model.kv_heads", heads.1)?;
        let tokens = match &self.model {
            ModelConfig::Dit(m) => {
                let n = (0..3).try_fold(1usize, |a, i| a.checked_mul(m.latent[i] / m.patch[i]));
                match n.filter(|&n| n <= MAX_SIZE) {
                    Some(n) => n,
                    None => {
                        return Err(Error::config(
                            "model.latent",
                            format!("gives more than {MAX_SIZE} tokens per clip (T/pt · H/ph · W/pw)"),
                        ))
                    }
                }
            }
            ModelConfig::Gpt(m) => m.seq_len,
        };
        divides(
            "parallel.cp",
            p.cp,
            "the sequence length (tokens per sample)",
            tokens,
        )?;
        pos("checkpoint.keep", self.checkpoint.keep)?;
        let heads = match &self.model {
            ModelConfig::Dit(m) => m.heads,
            ModelConfig::Gpt(m) => m.heads,
        };
        self.mup.validate(heads)?;
        self.launch.validate()
    }
}

fn at_most(key: &str, v: usize, max: usize) -> Result<()> {
    if v > max {
        return Err(Error::config(key, format!("must be at most {max}, got {v}")));
    }
    Ok(())
}

fn divides(key: &str, d: usize, of_key: &str, of: usize) -> Result<()> {
    if d == 0 || !of.is_multiple_of(d) {
        let fits: Vec<String> = (1..=of.min(4096))
            .filter(|x| of.is_multiple_of(*x))
            .take(12)
            .map(|x| x.to_string())
            .collect();
        return Err(Error::config(
            key,
            format!(
                "({d}) must divide {of_key} ({of}); values that fit: {}",
                fits.join(", ")
            ),
        ));
    }
    Ok(())
}
