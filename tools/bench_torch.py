"""PyTorch (CPU) side of `weft bench step`: the same DiT and GPT training step as weft
(forward, backward, AdamW) on random data, timed; prints one JSON object.

    python3 tools/bench_torch.py '{"dit": {...}, "gpt": {...}, "steps": 10}'

Exits with status 3 and a message when PyTorch is not installed.
"""

import json
import math
import os
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("PyTorch is not installed (pip install torch)", file=sys.stderr)
    sys.exit(3)


def rope(x, cos, sin):  # x (B, H, T, HD), pairs (i, i + HD/2)
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Attn(torch.nn.Module):
    def __init__(s, c, nh, nkv, bias, qk_norm, causal):
        super().__init__()
        s.nh, s.nkv, s.hd, s.causal = nh, nkv, c // nh, causal
        s.qkv = torch.nn.Linear(c, (nh + 2 * nkv) * s.hd, bias=bias)
        s.out = torch.nn.Linear(nh * s.hd, c, bias=bias)
        s.qn = torch.nn.RMSNorm(s.hd, eps=1e-6) if qk_norm else None
        s.kn = torch.nn.RMSNorm(s.hd, eps=1e-6) if qk_norm else None

    def forward(s, x, cos, sin):
        b, t, _ = x.shape
        q, k, v = s.qkv(x).split([s.nh * s.hd, s.nkv * s.hd, s.nkv * s.hd], -1)
        q = q.view(b, t, s.nh, s.hd)
        k = k.view(b, t, s.nkv, s.hd)
        if s.qn is not None:
            q, k = s.qn(q), s.kn(k)
        q, k = rope(q.transpose(1, 2), cos, sin), rope(k.transpose(1, 2), cos, sin)
        v = v.view(b, t, s.nkv, s.hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=s.causal, enable_gqa=s.nh != s.nkv)
        return s.out(o.transpose(1, 2).reshape(b, t, -1))


class DitBlock(torch.nn.Module):
    def __init__(s, c, nh, hidden, qk_norm):
        super().__init__()
        s.attn = Attn(c, nh, nh, True, qk_norm, False)
        s.fc1, s.fc2 = torch.nn.Linear(c, hidden), torch.nn.Linear(hidden, c)
        s.ada = torch.nn.Linear(c, 6 * c)

    def forward(s, x, sc, cos, sin):
        sh1, s1, g1, sh2, s2, g2 = s.ada(sc)[:, None].chunk(6, -1)
        ln = lambda v: F.layer_norm(v, v.shape[-1:], eps=1e-6)
        x = x + g1 * s.attn(ln(x) * (1 + s1) + sh1, cos, sin)
        return x + g2 * s.fc2(F.gelu(s.fc1(ln(x) * (1 + s2) + sh2), approximate="tanh"))


class Dit(torch.nn.Module):
    def __init__(s, m):
        super().__init__()
        c = m["width"]
        t, h, w, ch = m["latent"]
        s.p = m["patch"]
        pdim = s.p[0] * s.p[1] * s.p[2] * ch
        s.x_embed = torch.nn.Linear(pdim, c)
        s.t1, s.t2 = torch.nn.Linear(256, c), torch.nn.Linear(c, c)
        s.y = torch.nn.Embedding(m["num_classes"] + 1, c)
        s.blocks = torch.nn.ModuleList(DitBlock(c, m["heads"], int(c * m["mlp_ratio"]), m["qk_norm"]) for _ in range(m["depth"]))
        s.fada, s.fout = torch.nn.Linear(c, 2 * c), torch.nn.Linear(c, pdim)
        hd = c // m["heads"]
        n = (t // s.p[0]) * (h // s.p[1]) * (w // s.p[2])
        ang = torch.rand(n, hd // 2)
        s.cos, s.sin = ang.cos(), ang.sin()

    def forward(s, x, tt, y):
        b, t, h, w, c = x.shape
        pt, ph, pw = s.p
        tok = x.view(b, t // pt, pt, h // ph, ph, w // pw, pw, c).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, pt * ph * pw * c)
        f = torch.exp(-math.log(10000) * torch.arange(128) / 128)[None] * (tt[:, None] * 1000)
        cond = s.t2(F.silu(s.t1(torch.cat([f.cos(), f.sin()], -1)))) + s.y(y)
        sc = F.silu(cond)
        z = s.x_embed(tok)
        for blk in s.blocks:
            z = blk(z, sc, s.cos, s.sin)
        sh, scale = s.fada(sc)[:, None].chunk(2, -1)
        out = s.fout(F.layer_norm(z, z.shape[-1:], eps=1e-6) * (1 + scale) + sh)
        return out.view(b, t // pt, h // ph, w // pw, pt, ph, pw, c).permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(x.shape)


class GptBlock(torch.nn.Module):
    def __init__(s, c, nh, nkv, hidden):
        super().__init__()
        s.n1, s.n2 = torch.nn.RMSNorm(c, eps=1e-5), torch.nn.RMSNorm(c, eps=1e-5)
        s.attn = Attn(c, nh, nkv, False, False, True)
        s.fc1, s.fc2 = torch.nn.Linear(c, 2 * hidden, bias=False), torch.nn.Linear(hidden, c, bias=False)

    def forward(s, x, cos, sin):
        x = x + s.attn(s.n1(x), cos, sin)
        g, u = s.fc1(s.n2(x)).chunk(2, -1)
        return x + s.fc2(F.silu(g) * u)


class Gpt(torch.nn.Module):
    def __init__(s, m):
        super().__init__()
        c, v = m["width"], m["vocab_size"]
        hidden = m.get("mlp_hidden") or (8 * c // 3 + 63) // 64 * 64
        s.emb = torch.nn.Embedding(v, c)
        s.blocks = torch.nn.ModuleList(GptBlock(c, m["heads"], m.get("kv_heads") or m["heads"], hidden) for _ in range(m["depth"]))
        s.nf = torch.nn.RMSNorm(c, eps=1e-5)
        s.head = None if m["tie_embeddings"] else torch.nn.Linear(c, v, bias=False)
        hd = c // m["heads"]
        ang = torch.arange(m["seq_len"])[:, None] * 10000 ** (-2 * torch.arange(hd // 2)[None] / hd)
        s.cos, s.sin = ang.cos(), ang.sin()
        s.z = m["z_loss"]

    def forward(s, ids, targets):
        x = s.emb(ids)
        for blk in s.blocks:
            x = blk(x, s.cos, s.sin)
        x = s.nf(x)
        logits = x @ s.emb.weight.T if s.head is None else s.head(x)
        logits = logits.view(-1, logits.shape[-1])
        lse = torch.logsumexp(logits, -1)
        return F.cross_entropy(logits, targets.view(-1)) + s.z * (lse**2).mean()


def bench(model, make_batch, loss_fn, steps):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=False, foreach=True)
    times = []
    for i in range(steps + 2):
        batch = make_batch()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= 2:  # warm-up steps excluded
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main():
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    d, b = spec["dit"], spec["dit_batch"]
    dit = Dit(d)
    mk = lambda: (torch.randn(b, *d["latent"]), torch.rand(b), torch.randint(0, d["num_classes"], (b,)), torch.randn(b, *d["latent"]))
    lf = lambda m, x: F.mse_loss(m(x[0], x[1], x[2]), x[3])
    out["dit_step_s"] = bench(dit, mk, lf, spec["steps"])
    g, b = spec["gpt"], spec["gpt_batch"]
    gpt = Gpt(g)
    mk = lambda: (torch.randint(0, g["vocab_size"], (b, g["seq_len"])), torch.randint(0, g["vocab_size"], (b, g["seq_len"])))
    out["gpt_step_s"] = bench(gpt, mk, lambda m, x: m(*x), spec["steps"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
