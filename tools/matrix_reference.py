#!/usr/bin/env python3
"""Independent NumPy reference for weft's matrix optimizers (Muon, Scion).

Writes trainer/tests/fixtures/matrix.json: a small model's tensors (a lookup table, a hidden
matrix, a fused [q; k] projection whose halves are separate matrices, a read-out and a vector),
a gradient per step, the hyper-parameters, and the parameters after each step, in float64.
Written from the papers' definitions, not from weft's code:
- Newton–Schulz (Jordan et al., "Muon", 2024): X = G/(‖G‖_F + 1e-7), transposed to the wide
  side; five times A = X·Xᵀ, X ← a·X + (b·A + c·A·A)·X with (a, b, c) = (3.4445, −4.7750,
  2.0315).
- Muon with Nesterov momentum and Moonlight's scaling (Liu et al., 2025): m ← μ·m + g,
  u = g + μ·m, p ← p·(1 − lr·wd) − lr·0.2·√max(rows, cols)·NS(u) for hidden matrices; AdamW
  (decoupled decay, bias correction) for everything else.
- Scion (Pethick et al., 2025): m ← μ·m + (1 − μ)·g, then p ← p − lr·ρ·d (unconstrained) or
  p ← (1 − lr)·p − lr·ρ·d (constrained), d by the norm of each layer: spectral
  √(d_out/d_in)·NS(m); column norm √d_out·m_j/‖m_j‖ (columns of the linear map: a lookup
  table's rows); row norm m_i/(√d_in·‖m_i‖); sign sign(m)/d_in; vectors √n·m/‖m‖.
Global-norm clipping scales the gradient by clip/(‖g‖ + 1e-6) when ‖g‖ > clip.

Run: python3 tools/matrix_reference.py
"""
import json
import pathlib

import numpy as np

rng = np.random.default_rng(11)
# name, shape, role, groups of rows (fused projections)
TENSORS = [("tok.table", (5, 4), "embedding", None), ("h.weight", (6, 4), "hidden", None),
           ("qk.weight", (6, 4), "hidden", [3, 3]), ("head.weight", (3, 4), "output", None),
           ("norm.weight", (4,), "vector", None)]
STEPS = 4
H = dict(lr=2.0**-6, beta1=0.875, beta2=0.984375, eps=2.0**-26, weight_decay=0.125, grad_clip=3.0,
         momentum=0.9)
params = {n: rng.normal(size=s) for n, s, _, _ in TENSORS}
grads = [{n: rng.normal(size=s) * (4.0 if t == 1 else 0.5) for n, s, _, _ in TENSORS}
         for t in range(STEPS)]  # step 2 clips


def ns(g):
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (np.linalg.norm(g) + 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(5):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def clipped(gs):
    n = np.sqrt(sum(np.sum(g * g) for g in gs.values()))
    s = H["grad_clip"] / (n + 1e-6) if n > H["grad_clip"] else 1.0
    return {k: g * s for k, g in gs.items()}


def parts(name, x):
    """The separate matrices of a tensor (a fused projection's row groups)."""
    groups = dict((n, g) for n, _, _, g in TENSORS)[name]
    if groups is None:
        return [x]
    return np.split(x, np.cumsum(groups)[:-1], axis=0)


def muon():
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    out = []
    for t in range(1, STEPS + 1):
        g = clipped(grads[t - 1])
        lr, mu, wd = H["lr"], H["momentum"], H["weight_decay"]
        for name, _, role, _ in TENSORS:
            if role == "hidden":
                m[name] = mu * m[name] + g[name]
                u = g[name] + mu * m[name]
                d = np.concatenate([0.2 * np.sqrt(max(q.shape)) * ns(q) for q in parts(name, u)])
                p[name] = p[name] * (1 - lr * wd) - lr * d
            else:
                b1, b2 = H["beta1"], H["beta2"]
                m[name] = b1 * m[name] + (1 - b1) * g[name]
                v[name] = b2 * v[name] + (1 - b2) * g[name] ** 2
                decay = wd if role != "vector" else 0.0
                p[name] = p[name] * (1 - lr * decay)
                p[name] = p[name] - lr * (m[name] / (1 - b1**t)) / (np.sqrt(v[name] / (1 - b2**t)) + H["eps"])
        out.append({k: x.ravel().tolist() for k, x in p.items()})
    return out


def lmo(name, role, x, emb, outp):
    geo = {"hidden": "spectral", "embedding": emb, "output": outp, "vector": "rms"}[role]
    if geo == "rms":
        return np.sqrt(x.size) * x / np.linalg.norm(x)
    # The linear map: a lookup table is the transpose of what is stored.
    mat = x.T if name.endswith(".table") else x
    d_out, d_in = mat.shape
    if geo == "spectral":
        d = np.sqrt(d_out / d_in) * ns(mat)
    elif geo == "colnorm":
        d = np.sqrt(d_out) * mat / np.linalg.norm(mat, axis=0, keepdims=True)
    elif geo == "rownorm":
        d = mat / (np.sqrt(d_in) * np.linalg.norm(mat, axis=1, keepdims=True))
    else:
        d = np.sign(mat) / d_in
    return d.T if name.endswith(".table") else d


def scion(constrained, emb, outp, radii):
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    out = []
    for t in range(1, STEPS + 1):
        g = clipped(grads[t - 1])
        lr, mu = H["lr"], H["momentum"]
        for name, _, role, _ in TENSORS:
            m[name] = mu * m[name] + (1 - mu) * g[name]
            d = np.concatenate([lmo(name, role, q, emb, outp) for q in parts(name, m[name])])
            keep = (1 - lr) if constrained else 1.0
            p[name] = keep * p[name] - lr * radii[role] * d
        out.append({k: x.ravel().tolist() for k, x in p.items()})
    return out


RADII_A = dict(hidden=1.0, embedding=1.0, output=1.0, vector=1.0)
RADII_B = dict(hidden=2.0, embedding=0.5, output=8.0, vector=0.25)
fixture = dict(
    tensors=[dict(name=n, shape=list(s), role=r, groups=g) for n, s, r, g in TENSORS],
    params={k: v.ravel().tolist() for k, v in params.items()},
    grads=[{k: v.ravel().tolist() for k, v in g.items()} for g in grads],
    hyper=H,
    muon=muon(),
    scion_unconstrained=dict(embedding="colnorm", output="sign", radii=RADII_A,
                             after=scion(False, "colnorm", "sign", RADII_A)),
    scion_constrained=dict(embedding="sign", output="rownorm", radii=RADII_B,
                           after=scion(True, "sign", "rownorm", RADII_B)),
    scion_spectral=dict(embedding="spectral", output="spectral", radii=RADII_B,
                        after=scion(False, "spectral", "spectral", RADII_B)),
)
path = pathlib.Path(__file__).resolve().parent.parent / "trainer/tests/fixtures/matrix.json"
path.write_text(json.dumps(fixture, indent=1))
print(f"wrote {path}")
