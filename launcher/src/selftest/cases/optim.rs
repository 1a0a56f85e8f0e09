//! The optimizer and its reductions over a rank's flat f32 range (the optimizer ops take f32
//! or f64 only; the sum of squares also reads bf16 gradients), and the matrix optimizers'
//! pieces (Muon, Scion).

use super::super::ctx::{download, random, Ctx};
use super::super::sizes::Sizes;
use anyhow::Result;
use weft_kernels::{AdamW, Mix, Momentum, NewtonSchulz, Normalize, NormalizeDims, Ops};

/// One step's hyper-parameters (a mid-run step: bias correction still matters).
const H: AdamW = AdamW {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.1,
    step: 10,
    grad_scale: 0.5,
};

/// The sum of squares and the L2 norm with its backward, then an AdamW and an AdEMAMix step.
/// The steps report the parameter update (`p_new − p_old`), which is ~`lr` against
/// parameters of ~1: compared as parameters, a wrong update would hide in their rounding.
pub fn optimizer<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let n = s.flat;
    let dt = x.act();
    let g = x.input(131, n, 1.0)?;
    let be = x.be;
    let mut acc = x.values(&[0.25], dt, dt)?;
    be.sum_squares(B::view_mut(&mut acc), B::view(&g), n)?;
    x.out("sum_squares", "acc", &acc)?;
    let mut total = x.values(&[0.25], dt, dt)?;
    be.sum(B::view_mut(&mut total), B::view(&g), -0.5, n)?;
    x.out("sum", "acc", &total)?;
    let mut norm = x.zeros(dt, 1)?;
    be.l2norm_forward(B::view_mut(&mut norm), B::view(&g), n)?;
    x.out("l2norm_forward", "out", &norm)?;
    let dout = x.values(&[1.5], dt, dt)?;
    let mut dx = x.zeros(dt, n)?;
    be.l2norm_backward(
        B::view_mut(&mut dx),
        B::view(&dout),
        B::view(&g),
        B::view(&norm),
        n,
    )?;
    x.out("l2norm_backward", "dx", &dx)?;

    let second_moment: Vec<f64> = random(134, n, 0.1).iter().map(|v| v * v).collect();
    let (mut p, mut m, mut v) = (
        x.input(132, n, 1.0)?,
        x.input(133, n, 0.1)?,
        x.act_values(&second_moment)?,
    );
    let before = download(be, &p)?;
    be.adamw_update(
        B::view_mut(&mut p),
        B::view_mut(&mut m),
        B::view_mut(&mut v),
        B::view(&g),
        H,
        n,
    )?;
    let after = download(be, &p)?;
    x.push(
        "adamw_update",
        "update",
        after.iter().zip(&before).map(|(a, b)| a - b).collect(),
    );
    x.out("adamw_update", "m", &m)?;
    x.out("adamw_update", "v", &v)?;

    let mut m2 = x.input(135, n, 0.1)?;
    let mix = Mix {
        beta3: 0.999,
        alpha: 5.0,
    };
    be.ademamix_update(
        B::view_mut(&mut p),
        B::view_mut(&mut m),
        B::view_mut(&mut m2),
        B::view_mut(&mut v),
        B::view(&g),
        H,
        mix,
        n,
    )?;
    let again = download(be, &p)?;
    x.push(
        "ademamix_update",
        "update",
        again.iter().zip(&after).map(|(a, b)| a - b).collect(),
    );
    x.out("ademamix_update", "m", &m)?;
    x.out("ademamix_update", "m2", &m2)?;
    x.out("ademamix_update", "v", &v)
}

/// bf16 values squared and summed, and summed, into f32 accumulators (gradient norms, losses).
pub fn sum_squares_bf16<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let n = s.flat;
    let g = x.input(141, n, 1.0)?;
    let mut acc = x.values(&[0.25], x.stat(), x.stat())?;
    x.be.sum_squares(B::view_mut(&mut acc), B::view(&g), n)?;
    x.out("sum_squares", "acc", &acc)?;
    let mut total = x.values(&[0.25], x.stat(), x.stat())?;
    x.be.sum(B::view_mut(&mut total), B::view(&g), -0.5, n)?;
    x.out("sum", "acc", &total)
}

/// Muon's and Scion's pieces: momentum steps (Muon's Nesterov one, then Scion's damped one),
/// Newton–Schulz on a wide and a tall matrix (5 steps, scale 2), the four normalizations, and
/// a step along the direction (reported as the update, as AdamW's is).
pub fn matrix_optimizer<B: Ops>(x: &mut Ctx<'_, B>, s: &Sizes) -> Result<()> {
    let n = s.flat;
    let dt = x.act();
    let be = x.be;
    let g = x.input(151, n, 1.0)?;
    let (mut m, mut u) = (x.input(152, n, 0.1)?, x.zeros(dt, n)?);
    let muon = Momentum {
        mu: 0.95,
        dampening: 1.0,
        nesterov: true,
        grad_scale: 0.5,
    };
    let scion = Momentum {
        mu: 0.9,
        dampening: 0.1,
        nesterov: false,
        grad_scale: 1.0,
    };
    for h in [muon, scion] {
        be.momentum_update(B::view_mut(&mut m), B::view_mut(&mut u), B::view(&g), h, n)?;
        x.out("momentum_update", "m", &m)?;
        x.out("momentum_update", "u", &u)?;
    }

    for (rows, cols, arg) in [(96, 160, "x (96×160)"), (160, 96, "x (160×96)")] {
        let d = NewtonSchulz {
            rows,
            cols,
            steps: 5,
            scale: 2.0,
        };
        let mut a = x.input(153, rows * cols, 1.0)?;
        let mut work = x.zeros(dt, d.work_len())?;
        be.newton_schulz(B::view_mut(&mut a), B::view_mut(&mut work), d)?;
        x.out("newton_schulz", arg, &a)?;
    }

    // Odd rows and columns.
    let (rows, cols) = (s.rows - 1, s.c + 3);
    for (mode, arg) in [
        (Normalize::Frobenius, "x (frobenius)"),
        (Normalize::Rows, "x (rows)"),
        (Normalize::Cols, "x (cols)"),
        (Normalize::Sign, "x (sign)"),
    ] {
        let d = NormalizeDims {
            rows,
            cols,
            mode,
            scale: 1.5,
            eps: 1e-7,
        };
        let mut a = x.input(154, rows * cols, 1.0)?;
        be.matrix_normalize(B::view_mut(&mut a), d)?;
        x.out("matrix_normalize", arg, &a)?;
    }

    let mut p = x.input(155, n, 1.0)?;
    let before = download(be, &p)?;
    let lr = 0.02;
    be.apply_direction(B::view_mut(&mut p), B::view(&u), lr, 1.0 - lr * 0.1, n)?;
    let after = download(be, &p)?;
    x.push(
        "apply_direction",
        "update",
        after.iter().zip(&before).map(|(a, b)| a - b).collect(),
    );
    Ok(())
}
