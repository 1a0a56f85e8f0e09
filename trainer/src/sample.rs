//! Generation from exported weights.
//!
//! DiT: integrate the flow ODE `dx/dt = v(x, t)` from noise at `t = 1` to data at `t = 0`
//! with `steps` Euler steps, with classifier-free guidance
//! `v = v(∅) + g·(v(y) − v(∅))`, and write `samples.gif` (animated) and `samples.png`
//! (frames left to right) with generated clips on the left and real clips of the same class
//! on the right. GPT: sample text from a prompt.

use crate::config::{DitConfig, GptConfig, ModelConfig};
use crate::data::{sample_rng, shapes, DataConfigExt, Stream};
use crate::job::layout_of;
use crate::model::{dit::precondition, Dit, DitBatch, Gpt};
use crate::rng::normal;
use crate::{export, render, Error, Result};
use rand::Rng;
use std::path::Path;
use weft_kernels::{CpuBackend, DType, HostVec};

#[derive(Clone, Debug)]
pub struct SampleOptions {
    pub classes: Vec<usize>,
    pub per_class: usize,
    pub steps: usize,
    pub guidance: f64,
    pub prompt: String,
    pub tokens: usize,
    pub temperature: f64,
    pub seed: u64,
}

/// Load `weights` and generate into `out`; returns what was written.
pub fn sample(weights: &Path, out: &Path, o: &SampleOptions) -> Result<Vec<String>> {
    let (cfg, flat) = export::load(weights, layout_of)?;
    std::fs::create_dir_all(out).map_err(Error::io(out))?;
    match &cfg.model {
        ModelConfig::Dit(m) => {
            let classes: Vec<usize> = if o.classes.is_empty() {
                (0..m.num_classes).collect()
            } else {
                o.classes.clone()
            };
            if let Some(&bad) = classes.iter().find(|&&k| k >= m.num_classes) {
                return Err(Error::Other(format!(
                    "class {bad} is outside 0..{}",
                    m.num_classes
                )));
            }
            let want: Vec<usize> = classes
                .iter()
                .flat_map(|&k| std::iter::repeat_n(k, o.per_class))
                .collect();
            let gen = generate_clips(m, &flat, &want, o.steps, o.guidance, o.seed)?;
            let real: Vec<f32> = if cfg.data.is_shapes() {
                want.iter()
                    .enumerate()
                    .flat_map(|(i, &k)| shapes::clips_of_class(m, k, 1, i as u64))
                    .collect()
            } else {
                vec![]
            };
            let [t, h, w, c] = m.latent;
            let gif = out.join("samples.gif");
            let png = out.join("samples.png");
            render::write_gif(&gif, &gen, &real, want.len(), [t, h, w, c])?;
            render::write_png(&png, &gen, &real, want.len(), [t, h, w, c])?;
            let names: Vec<String> = classes
                .iter()
                .map(|&k| format!("{k}: {}", class_label(&cfg, k)))
                .collect();
            let legend = out.join("samples.txt");
            let text = format!(
                "rows (top to bottom), {} per class; left: generated, right: real\n{}\n",
                o.per_class,
                names.join("\n")
            );
            std::fs::write(&legend, text).map_err(Error::io(&legend))?;
            Ok(vec![
                gif.display().to_string(),
                png.display().to_string(),
                legend.display().to_string(),
            ])
        }
        ModelConfig::Gpt(m) => {
            let text = generate_text(m, &flat, &o.prompt, o.tokens, o.temperature, o.seed)?;
            let path = out.join("sample.txt");
            std::fs::write(&path, &text).map_err(Error::io(&path))?;
            println!("{text}");
            Ok(vec![path.display().to_string()])
        }
    }
}

fn class_label(cfg: &crate::Config, k: usize) -> String {
    if cfg.data.is_shapes() {
        shapes::class_name(k)
    } else {
        format!("class {k}")
    }
}

/// Generate one clip per entry of `classes` `(N, T, H, W, C)`.
pub fn generate_clips(
    m: &DitConfig,
    flat: &[f32],
    classes: &[usize],
    steps: usize,
    guidance: f64,
    seed: u64,
) -> Result<Vec<f32>> {
    let be = CpuBackend::new();
    let n = classes.len();
    let guided = guidance != 1.0;
    let b = if guided { 2 * n } else { n };
    let mut model = Dit::new(&be, m, b, DType::F32, false)?;
    let params = HostVec::from(flat.to_vec());
    let per = m.latent.iter().product::<usize>();
    let mut x: Vec<f64> = (0..n)
        .flat_map(|i| {
            let mut r = sample_rng(seed, Stream::ValNoise, 1 << 48 | i as u64);
            (0..per).map(move |_| normal(&mut r))
        })
        .collect();
    let mut class: Vec<i32> = classes.iter().map(|&k| k as i32).collect();
    if guided {
        class.extend(std::iter::repeat_n(m.num_classes as i32, n));
    }
    let text = (m.text_dim > 0).then(|| vec![0f32; b * m.text_dim]);
    for s in 0..steps {
        let t = 1.0 - s as f64 / steps as f64;
        let dt = 1.0 / steps as f64;
        let (c_in, c_skip, c_out) = if m.precondition {
            precondition(t, m.sigma_data)
        } else {
            (1.0, 0.0, 1.0)
        };
        let xin: Vec<f32> = x.iter().map(|&v| (c_in * v) as f32).collect();
        let batch = DitBatch {
            x: if guided { [xin.clone(), xin].concat() } else { xin },
            t: vec![t as f32; b],
            class: class.clone(),
            text: text.clone(),
            target: vec![],
        };
        let f = model.predict(&be, params.view(), &batch)?;
        for (i, xv) in x.iter_mut().enumerate() {
            let v_c = c_skip * *xv + c_out * f[i];
            let v = if guided {
                let v_u = c_skip * *xv + c_out * f[n * per + i];
                v_u + guidance * (v_c - v_u)
            } else {
                v_c
            };
            *xv -= dt * v;
        }
    }
    Ok(x.iter().map(|&v| v as f32).collect())
}

/// Continue `prompt` (byte-level) by `tokens` tokens.
pub fn generate_text(
    m: &GptConfig,
    flat: &[f32],
    prompt: &str,
    tokens: usize,
    temperature: f64,
    seed: u64,
) -> Result<String> {
    let be = CpuBackend::new();
    let mut model = Gpt::new(&be, m, 1, DType::F32, false)?;
    let params = HostVec::from(flat.to_vec());
    let mut ids: Vec<i32> = prompt.bytes().map(|b| b as i32).collect();
    if ids.is_empty() {
        ids.push(crate::data::tokens::EOD as i32);
    }
    let start = ids.len();
    let mut r = sample_rng(seed, Stream::ValNoise, 0);
    let (t, v) = (m.seq_len, m.vocab_size);
    for _ in 0..tokens {
        let ctx: Vec<i32> = ids[ids.len().saturating_sub(t)..].to_vec();
        let mut window = ctx.clone();
        window.resize(t, 0);
        let logits = model.logits(&be, params.view(), &window)?;
        let row = &logits[(ctx.len() - 1) * v..ctx.len() * v];
        let next = if temperature <= 0.0 {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0)
        } else {
            let mx = row.iter().cloned().fold(f64::MIN, f64::max);
            let p: Vec<f64> = row.iter().map(|&l| ((l - mx) / temperature).exp()).collect();
            let mut u = r.random::<f64>() * p.iter().sum::<f64>();
            p.iter()
                .position(|&q| {
                    u -= q;
                    u <= 0.0
                })
                .unwrap_or(v - 1)
        };
        ids.push(next as i32);
    }
    let bytes: Vec<u8> = ids[start..]
        .iter()
        .filter(|&&i| i < 256)
        .map(|&i| i as u8)
        .collect();
    Ok(format!("{prompt}{}", String::from_utf8_lossy(&bytes)))
}
