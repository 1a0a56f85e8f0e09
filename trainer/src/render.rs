//! Clips to pictures: an animated GIF and a PNG strip of frames, generated clips on the left
//! and real ones on the right, each pixel enlarged to a block so small clips stay visible.

use crate::{Error, Result};
use std::path::Path;

/// Pixels per latent value along each axis.
const ZOOM: usize = 8;
const GAP: usize = 4;

fn to_u8(v: f32) -> u8 {
    (((v.clamp(-1.0, 1.0) + 1.0) * 0.5) * 255.0).round() as u8
}

/// RGB of clip `i`, frame `f`, pixel `(y, x)`; channels beyond 3 are ignored, fewer repeat.
fn rgb(clips: &[f32], i: usize, f: usize, y: usize, x: usize, [t, h, w, c]: [usize; 4]) -> [u8; 3] {
    let o = (((i * t + f) * h + y) * w + x) * c;
    std::array::from_fn(|k| to_u8(clips[o + k.min(c - 1)]))
}

/// One canvas: `rows` clips, each as `cols(frame)` tiles; generated left, real right.
fn canvas(
    gen: &[f32],
    real: &[f32],
    rows: usize,
    dims: [usize; 4],
    frames: &[usize],
) -> (usize, usize, Vec<u8>) {
    let [_, h, w, _] = dims;
    let (th, tw) = (h * ZOOM, w * ZOOM);
    let sides = if real.is_empty() { 1 } else { 2 };
    let width = sides * frames.len() * (tw + GAP) + GAP * 3;
    let height = rows * (th + GAP) + GAP;
    let mut img = vec![40u8; width * height * 3];
    for side in 0..sides {
        let src = if side == 0 { gen } else { real };
        let x0 = side * (frames.len() * (tw + GAP) + GAP * 2);
        for i in 0..rows {
            for (j, &f) in frames.iter().enumerate() {
                for y in 0..th {
                    for x in 0..tw {
                        let px = rgb(src, i, f, y / ZOOM, x / ZOOM, dims);
                        let (cy, cx) = (GAP + i * (th + GAP) + y, x0 + GAP + j * (tw + GAP) + x);
                        img[(cy * width + cx) * 3..][..3].copy_from_slice(&px);
                    }
                }
            }
        }
    }
    (width, height, img)
}

/// Animated GIF: one canvas per frame.
pub fn write_gif(path: &Path, gen: &[f32], real: &[f32], rows: usize, dims: [usize; 4]) -> Result<()> {
    let file = std::fs::File::create(path).map_err(Error::io(path))?;
    let (w, h, _) = canvas(gen, real, rows, dims, &[0]);
    let err = |e: gif::EncodingError| Error::Other(format!("{}: {e}", path.display()));
    let mut enc = gif::Encoder::new(file, w as u16, h as u16, &[]).map_err(err)?;
    enc.set_repeat(gif::Repeat::Infinite).map_err(err)?;
    for f in 0..dims[0] {
        let (_, _, img) = canvas(gen, real, rows, dims, &[f]);
        let mut frame = gif::Frame::from_rgb_speed(w as u16, h as u16, &img, 10);
        frame.delay = 15;
        enc.write_frame(&frame).map_err(err)?;
    }
    Ok(())
}

/// PNG: every frame left to right.
pub fn write_png(path: &Path, gen: &[f32], real: &[f32], rows: usize, dims: [usize; 4]) -> Result<()> {
    let frames: Vec<usize> = (0..dims[0]).collect();
    let (w, h, img) = canvas(gen, real, rows, dims, &frames);
    let file = std::fs::File::create(path).map_err(Error::io(path))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let err = |e: png::EncodingError| Error::Other(format!("{}: {e}", path.display()));
    enc.write_header()
        .map_err(err)?
        .write_image_data(&img)
        .map_err(err)
}
