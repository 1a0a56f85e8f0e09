"""Independent reference for weft's models, written from the maths with JAX autodiff.

Implements the tiny video DiT and the tiny GPT of `trainer/tests/reference.rs` — every layer
from its formula, no weft code — and writes `trainer/tests/fixtures/reference.json`: the
configs, inputs, weights, the loss and the gradient of every parameter (all in float64).
The Rust test loads the same weights into weft and must match.

    pip install jax numpy && python3 tools/reference.py
"""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

OUT = pathlib.Path(__file__).resolve().parent.parent / "trainer/tests/fixtures/reference.json"
RNG = np.random.default_rng(1234)


def uniform(shape, scale=0.5):
    return RNG.uniform(-scale, scale, size=shape)


def f32_exact(a):
    """Round to values float32 holds exactly (weft's host batches are float32)."""
    return np.asarray(a, np.float32).astype(np.float64)


# ---------------------------------------------------------------- shared layers

def linear(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def layernorm(x, eps):  # no affine
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps)


def rmsnorm(x, w, eps):
    return x / jnp.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def silu(x):
    return x / (1 + jnp.exp(-x))


def gelu_tanh(x):
    return 0.5 * x * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def rope(x, ang):
    """x (B, T, H, HD); ang (T, HD/2); pairs (x[i], x[i + HD/2])."""
    h = x.shape[-1] // 2
    c, s = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
    x1, x2 = x[..., :h], x[..., h:]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def attention(q, k, v, causal):
    """q (B, T, NH, HD), k/v (B, T, NKV, HD); grouped-query heads."""
    nh, nkv, hd = q.shape[2], k.shape[2], q.shape[3]
    k = jnp.repeat(k, nh // nkv, axis=2)
    v = jnp.repeat(v, nh // nkv, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    if causal:
        t = q.shape[1]
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    p = jax.nn.softmax(s, -1)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v)


def attn_block(p, pre, h, ang, nh, nkv, hd, causal, qk_norm, eps):
    b, t, _ = h.shape
    wqkv = p[f"{pre}.attn.qkv.weight"]
    bqkv = p.get(f"{pre}.attn.qkv.bias")
    y = linear(h, wqkv, bqkv)
    q = y[..., : nh * hd].reshape(b, t, nh, hd)
    k = y[..., nh * hd : (nh + nkv) * hd].reshape(b, t, nkv, hd)
    v = y[..., (nh + nkv) * hd :].reshape(b, t, nkv, hd)
    if qk_norm:
        q = rmsnorm(q, p[f"{pre}.attn.q_norm.weight"], eps)
        k = rmsnorm(k, p[f"{pre}.attn.k_norm.weight"], eps)
    o = attention(rope(q, ang), rope(k, ang), v, causal).reshape(b, t, nh * hd)
    return linear(o, p[f"{pre}.attn.out.weight"], p.get(f"{pre}.attn.out.bias"))


# ---------------------------------------------------------------- DiT

DIT = dict(width=16, depth=2, heads=2, mlp_ratio=2.0, latent=[2, 4, 4, 3], patch=[1, 2, 2],
           num_classes=3, text_dim=5, qk_norm=True, rope_theta=100.0)
FREQ_DIM = 256


def dit_shapes(cfg):
    c, (pt, ph, pw), ch = cfg["width"], cfg["patch"], cfg["latent"][3]
    pdim, hid = pt * ph * pw * ch, int(round(c * cfg["mlp_ratio"]))
    s = {"x_embed.weight": (c, pdim), "x_embed.bias": (c,),
         "t_embed.fc1.weight": (c, FREQ_DIM), "t_embed.fc1.bias": (c,),
         "t_embed.fc2.weight": (c, c), "t_embed.fc2.bias": (c,),
         "y_embed.table": (cfg["num_classes"] + 1, c),
         "text_proj.weight": (c, cfg["text_dim"]), "text_proj.bias": (c,)}
    hd = c // cfg["heads"]
    for i in range(cfg["depth"]):
        p = f"blocks.{i}"
        s |= {f"{p}.attn.qkv.weight": (3 * c, c), f"{p}.attn.qkv.bias": (3 * c,),
              f"{p}.attn.q_norm.weight": (hd,), f"{p}.attn.k_norm.weight": (hd,),
              f"{p}.attn.out.weight": (c, c), f"{p}.attn.out.bias": (c,),
              f"{p}.mlp.fc1.weight": (hid, c), f"{p}.mlp.fc1.bias": (hid,),
              f"{p}.mlp.fc2.weight": (c, hid), f"{p}.mlp.fc2.bias": (c,),
              f"{p}.adaln.weight": (6 * c, c), f"{p}.adaln.bias": (6 * c,)}
    s |= {"final.adaln.weight": (2 * c, c), "final.adaln.bias": (2 * c,),
          "final.linear.weight": (pdim, c), "final.linear.bias": (pdim,)}
    return s


def patchify(x, patch):
    b, t, h, w, c = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # (b, T', H', W', pt, ph, pw, c)
    return x.reshape(b, (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c)


def unpatchify(tok, patch, shape):
    b, t, h, w, c = shape
    pt, ph, pw = patch
    x = tok.reshape(b, t // pt, h // ph, w // pw, pt, ph, pw, c)
    return x.transpose(0, 1, 4, 2, 5, 3, 6, 7).reshape(shape)


def rope3d_angles(grid, hd, theta):
    half = hd // 2
    hw = half // 3
    bands = [half - 2 * hw, hw, hw]
    t, h, w = grid
    pos = np.array([[i, j, k] for i in range(t) for j in range(h) for k in range(w)], float)
    cols = []
    for axis, n in enumerate(bands):
        for j in range(n):
            cols.append(pos[:, axis] * theta ** (-j / n))
    return jnp.array(np.stack(cols, 1))


def timestep_features(t, dim, max_period=10000.0):
    half = dim // 2
    f = max_period ** (-jnp.arange(half) / half)
    a = t[:, None] * f[None, :]
    return jnp.concatenate([jnp.cos(a), jnp.sin(a)], -1)


def dit_loss(p, batch, cfg):
    c, nh = cfg["width"], cfg["heads"]
    hd = c // nh
    x, t, cls, text, target = batch
    b = x.shape[0]
    tf = timestep_features(t * 1000.0, FREQ_DIM)
    temb = linear(silu(linear(tf, p["t_embed.fc1.weight"], p["t_embed.fc1.bias"])),
                  p["t_embed.fc2.weight"], p["t_embed.fc2.bias"])
    cond = temb + p["y_embed.table"][cls] + linear(text, p["text_proj.weight"], p["text_proj.bias"])
    sc = silu(cond)
    tok = patchify(x, cfg["patch"])
    grid = [cfg["latent"][i] // cfg["patch"][i] for i in range(3)]
    ang = rope3d_angles(grid, hd, cfg["rope_theta"])
    h = linear(tok, p["x_embed.weight"], p["x_embed.bias"])
    eps = 1e-6
    for i in range(cfg["depth"]):
        pre = f"blocks.{i}"
        m = linear(sc, p[f"{pre}.adaln.weight"], p[f"{pre}.adaln.bias"])  # (B, 6C)
        sh1, sc1, g1, sh2, sc2, g2 = [m[:, j * c:(j + 1) * c][:, None, :] for j in range(6)]
        a_in = layernorm(h, eps) * (1 + sc1) + sh1
        h = h + g1 * attn_block(p, pre, a_in, ang, nh, nh, hd, False, cfg["qk_norm"], eps)
        m_in = layernorm(h, eps) * (1 + sc2) + sh2
        f = gelu_tanh(linear(m_in, p[f"{pre}.mlp.fc1.weight"], p[f"{pre}.mlp.fc1.bias"]))
        h = h + g2 * linear(f, p[f"{pre}.mlp.fc2.weight"], p[f"{pre}.mlp.fc2.bias"])
    fm = linear(sc, p["final.adaln.weight"], p["final.adaln.bias"])
    fs, fsc = fm[:, None, :c], fm[:, None, c:]
    out = linear(layernorm(h, eps) * (1 + fsc) + fs, p["final.linear.weight"], p["final.linear.bias"])
    pred = unpatchify(out, cfg["patch"], x.shape)
    return jnp.mean((pred - target) ** 2)


# ---------------------------------------------------------------- GPT

GPT = dict(width=16, depth=2, heads=4, kv_heads=2, vocab_size=11, seq_len=6, mlp_hidden=24,
           tie_embeddings=False, z_loss=1e-2, rope_theta=100.0)


def gpt_shapes(cfg):
    c, v, f = cfg["width"], cfg["vocab_size"], cfg["mlp_hidden"]
    hd = c // cfg["heads"]
    qkv = (cfg["heads"] + 2 * cfg["kv_heads"]) * hd
    s = {"tok_embed.table": (v, c)}
    for i in range(cfg["depth"]):
        p = f"blocks.{i}"
        s |= {f"{p}.norm1.weight": (c,), f"{p}.attn.qkv.weight": (qkv, c),
              f"{p}.attn.out.weight": (c, cfg["heads"] * hd), f"{p}.norm2.weight": (c,),
              f"{p}.mlp.fc1.weight": (2 * f, c), f"{p}.mlp.fc2.weight": (c, f)}
    s |= {"norm_f.weight": (c,), "head.weight": (v, c)}
    return s


def gpt_loss(p, batch, cfg):
    ids, targets = batch
    c, nh, nkv = cfg["width"], cfg["heads"], cfg["kv_heads"]
    hd, f, eps = c // nh, cfg["mlp_hidden"], 1e-5
    t = ids.shape[1]
    ang = jnp.array(np.arange(t)[:, None] * cfg["rope_theta"] ** (-2 * np.arange(hd // 2)[None, :] / hd))
    h = p["tok_embed.table"][ids]
    for i in range(cfg["depth"]):
        pre = f"blocks.{i}"
        a_in = rmsnorm(h, p[f"{pre}.norm1.weight"], eps)
        h = h + attn_block(p, pre, a_in, ang, nh, nkv, hd, True, False, eps)
        u = linear(rmsnorm(h, p[f"{pre}.norm2.weight"], eps), p[f"{pre}.mlp.fc1.weight"])
        h = h + linear(silu(u[..., :f]) * u[..., f:], p[f"{pre}.mlp.fc2.weight"])
    logits = linear(rmsnorm(h, p["norm_f.weight"], eps), p["head.weight"])
    lse = jax.scipy.special.logsumexp(logits, -1)
    valid = targets >= 0
    picked = jnp.take_along_axis(logits, jnp.maximum(targets, 0)[..., None], -1)[..., 0]
    per = lse - picked + cfg["z_loss"] * lse**2
    return jnp.sum(jnp.where(valid, per, 0.0)) / jnp.sum(valid)


# ---------------------------------------------------------------- fixture

def case(name, cfg, shapes, loss_fn, batch, batch_json):
    params = {k: jnp.array(uniform(s)) for k, s in shapes.items()}
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, cfg)
    flat = lambda d: {k: np.asarray(v, float).ravel().tolist() for k, v in d.items()}
    print(f"{name}: loss {float(loss):.12f}, {sum(int(np.prod(s)) for s in shapes.values())} parameters")
    return {"config": cfg, "batch": batch_json, "params": flat(params),
            "shapes": {k: list(s) for k, s in shapes.items()}, "loss": float(loss), "grads": flat(grads)}


def main():
    b = 2
    lat = DIT["latent"]
    x = f32_exact(uniform((b, *lat), 1.0))
    t = f32_exact([0.3, 0.8])
    cls = np.array([1, 3])  # 3 = the null class
    text = f32_exact(uniform((b, DIT["text_dim"]), 1.0))
    target = f32_exact(uniform((b, *lat), 1.0))
    dit = case("dit", DIT, dit_shapes(DIT), dit_loss,
               (jnp.array(x), jnp.array(t), jnp.array(cls), jnp.array(text), jnp.array(target)),
               {"x": x.ravel().tolist(), "t": t.tolist(), "class": cls.tolist(),
                "text": text.ravel().tolist(), "target": target.ravel().tolist()})
    ids = RNG.integers(0, GPT["vocab_size"], size=(b, GPT["seq_len"]))
    targets = RNG.integers(0, GPT["vocab_size"], size=(b, GPT["seq_len"]))
    targets[0, 2] = -1
    gpt = case("gpt", GPT, gpt_shapes(GPT), gpt_loss, (jnp.array(ids), jnp.array(targets)),
               {"ids": ids.ravel().tolist(), "targets": targets.ravel().tolist()})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"generator": "tools/reference.py (JAX, float64)", "dit": dit, "gpt": gpt}))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
