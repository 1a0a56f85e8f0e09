//! The procedural video dataset: clips of one coloured shape moving and bouncing on a black
//! background, labelled by `(shape, colour, motion)`.
//!
//! Class `k` = `shape·6 + colour·2 + motion` with shapes {square, disc}, colours {red, green,
//! blue} and motions {horizontal, vertical}: [`NUM_CLASSES`] = 12. Size, start position, speed
//! and direction come from the sample's content stream. Pixels are in `[-1, 1]`, edges
//! anti-aliased, so the task is smooth enough to learn on a CPU in minutes.

use super::{sample_rng, Clips, Source, Split, Stream};
use crate::config::DitConfig;
use crate::model::DitBatch;
use rand::Rng;

mod classes;
pub use classes::{class_name, COLOURS, MOTIONS, NUM_CLASSES, SHAPES};

/// Render one clip `(T, H, W, 3)` of class `k`.
pub fn render(t: usize, h: usize, w: usize, k: usize, r: &mut impl Rng) -> Vec<f32> {
    let (shape, colour, motion) = (k / 6, (k / 2) % 3, k % 2);
    let side = h.min(w) as f64;
    let radius = side * r.random_range(0.16..0.26);
    let mut pos = [
        r.random_range(radius..w as f64 - radius),
        r.random_range(radius..h as f64 - radius),
    ];
    let speed = side * r.random_range(0.06..0.12) * if r.random::<bool>() { 1.0 } else { -1.0 };
    let mut vel = if motion == 0 { [speed, 0.0] } else { [0.0, speed] };
    let mut out = vec![-1f32; t * h * w * 3];
    for f in 0..t {
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f64 + 0.5 - pos[0], y as f64 + 0.5 - pos[1]);
                // Signed distance to the shape's edge (negative inside), then a 1-px ramp.
                let sd = if shape == 0 {
                    dx.abs().max(dy.abs()) - radius
                } else {
                    (dx * dx + dy * dy).sqrt() - radius
                };
                let cover = (0.5 - sd).clamp(0.0, 1.0) as f32;
                let px = ((f * h + y) * w + x) * 3;
                out[px + colour] = -1.0 + 2.0 * cover;
            }
        }
        // Move, bouncing off the walls.
        for a in 0..2 {
            let lim = if a == 0 { w } else { h } as f64;
            pos[a] += vel[a];
            if pos[a] < radius || pos[a] > lim - radius {
                vel[a] = -vel[a];
                pos[a] = pos[a].clamp(radius, lim - radius);
            }
        }
    }
    out
}

/// The class of sample `index` (uniform over classes, from its content stream).
fn class_of(seed: u64, stream: Stream, index: u64) -> (usize, rand_chacha::ChaCha8Rng) {
    let mut r = sample_rng(seed, stream, index);
    (r.random_range(0..NUM_CLASSES), r)
}

/// Clean clips of the given indices.
pub fn clips(cfg: &DitConfig, seed: u64, split: Split, indices: &[u64]) -> Clips {
    let [t, h, w, _] = cfg.latent;
    let stream = if split == Split::Train {
        Stream::Content
    } else {
        Stream::ValContent
    };
    let mut x0 = Vec::with_capacity(indices.len() * t * h * w * 3);
    let mut class = vec![];
    for &i in indices {
        let (k, mut r) = class_of(seed, stream, i);
        x0.extend(render(t, h, w, k, &mut r));
        class.push(k as i32);
    }
    Clips {
        x0,
        class,
        text: None,
    }
}

/// Clips of class `k` (for showing real samples next to generated ones).
pub fn clips_of_class(cfg: &DitConfig, k: usize, n: usize, seed: u64) -> Vec<f32> {
    let [t, h, w, _] = cfg.latent;
    (0..n as u64)
        .flat_map(|i| render(t, h, w, k, &mut sample_rng(seed, Stream::ValContent, 1 << 40 | i)))
        .collect()
}

/// The procedural source for a DiT.
pub struct Shapes {
    pub cfg: DitConfig,
    pub seed: u64,
}

impl Source for Shapes {
    type Batch = DitBatch;
    fn batch(&self, split: Split, indices: &[u64]) -> crate::Result<DitBatch> {
        let c = clips(&self.cfg, self.seed, split, indices);
        Ok(super::flow_batch(&self.cfg, self.seed, split, indices, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn clips_show_the_class_colour_moving_along_the_class_axis() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for k in 0..NUM_CLASSES {
            let (t, h, w) = (6, 16, 16);
            let clip = render(t, h, w, k, &mut r);
            let colour = (k / 2) % 3;
            let centroid = |f: usize| {
                let (mut sx, mut sy, mut m) = (0.0, 0.0, 0.0);
                for y in 0..h {
                    for x in 0..w {
                        let v = (clip[((f * h + y) * w + x) * 3 + colour] + 1.0) as f64 / 2.0;
                        (sx, sy, m) = (sx + v * x as f64, sy + v * y as f64, m + v);
                    }
                }
                assert!(m > 4.0, "class {k}: shape visible in frame {f}");
                (sx / m, sy / m)
            };
            let other: f32 = clip
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 != colour)
                .map(|(_, v)| v + 1.0)
                .sum();
            assert_eq!(other, 0.0, "class {k}: only its colour channel lights up");
            // The largest displacement from frame 0 along each axis (a bounce may stall a step).
            let a = centroid(0);
            let (mut dx, mut dy) = (0f64, 0f64);
            for f in 1..t {
                let b = centroid(f);
                (dx, dy) = (dx.max((b.0 - a.0).abs()), dy.max((b.1 - a.1).abs()));
            }
            if k % 2 == 0 {
                assert!(
                    dx > 0.3 && dy < 0.05 * dx,
                    "class {k} moves horizontally: {dx} {dy}"
                );
            } else {
                assert!(
                    dy > 0.3 && dx < 0.05 * dy,
                    "class {k} moves vertically: {dx} {dy}"
                );
            }
        }
    }
}
