#!/usr/bin/env python3
"""Independent NumPy reference for weft's element-wise optimizers (AdamW, AdEMAMix).

Writes trainer/tests/fixtures/optim.json: fixed parameters and a gradient per step, the
hyper-parameters, and the parameters after each step, in float64. Written from the papers'
definitions, not from weft's code:
- AdamW (Loshchilov & Hutter; PyTorch semantics): decoupled decay p ← p·(1 − lr·wd), then
  p ← p − lr·m̂/(√v̂ + eps) with bias-corrected moments.
- AdEMAMix (Pagliardini, Ablin & Grangier, 2024, Algorithm 1): a slow EMA m2 with rate β3(t),
  mixed in as (m̂1 + α(t)·m2)/(√v̂ + eps); α(t) = min(t·α/T, α) and
  β3(t) = min(exp(ln β1·ln β3 / ((1 − t/T)·ln β3 + (t/T)·ln β1)), β3).
Global-norm clipping scales the gradient by clip/(‖g‖ + 1e-6) when ‖g‖ > clip.

Run: python3 tools/optim_reference.py
"""
import json
import math
import pathlib

import numpy as np

N, STEPS = 12, 6
rng = np.random.default_rng(7)
p0 = rng.normal(size=N)
grads = [rng.normal(size=N) * (3.0 if s == 2 else 0.5) for s in range(STEPS)]  # step 2 clips
decays = [i % 3 != 0 for i in range(N)]  # every third element is a "vector" (no decay)
# Hyper-parameters exact in f32 (weft hands them to its kernels as f32).
H = dict(lr=2.0**-7, beta1=0.875, beta2=0.984375, eps=2.0**-26, weight_decay=0.125, grad_clip=1.0,
         beta3=0.998046875, alpha=4.0, mix_warmup_steps=4)


def clip(g):
    n = np.sqrt(np.sum(g * g))
    return g * (H["grad_clip"] / (n + 1e-6)) if n > H["grad_clip"] else g


def run(kind):
    p, m, v, m2 = p0.copy(), np.zeros(N), np.zeros(N), np.zeros(N)
    wd = np.where(decays, H["weight_decay"], 0.0)
    out = []
    for t in range(1, STEPS + 1):
        g = clip(grads[t - 1])
        b1, b2, lr = H["beta1"], H["beta2"], H["lr"]
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        den = np.sqrt(v / (1 - b2 ** t)) + H["eps"]
        p = p * (1 - lr * wd)
        if kind == "adamw":
            p = p - lr * (m / (1 - b1 ** t)) / den
        else:
            T = H["mix_warmup_steps"]
            f = min(t / T, 1.0)
            l1, l3 = math.log(b1), math.log(H["beta3"])
            b3 = min(math.exp(l1 * l3 / ((1 - f) * l3 + f * l1)), H["beta3"])
            alpha = f * H["alpha"]
            m2 = b3 * m2 + (1 - b3) * g
            p = p - lr * (m / (1 - b1 ** t) + alpha * m2) / den
        out.append(p.tolist())
    return out


fixture = dict(params=p0.tolist(), grads=[g.tolist() for g in grads], decays=decays, hyper=H,
               adamw=run("adamw"), ademamix=run("ademamix"))
path = pathlib.Path(__file__).resolve().parent.parent / "trainer/tests/fixtures/optim.json"
path.write_text(json.dumps(fixture, indent=1))
print(f"wrote {path}")
