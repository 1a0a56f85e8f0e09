"""PyTorch side of `weft bench step` and `weft bench mfu`: the same DiT and GPT training step
as weft (forward, backward, clipping, AdamW) on random data, timed; prints one JSON object.

    python3 tools/bench_torch.py '{"dit": {...}, "gpt": {...}, "steps": 10}'       # bench step (CPU)
    python3 tools/bench_torch.py '{"mfu": {"kind": "dit", "model": {...}, "batch": 8,
        "grad_accum": 1, "steps": 10, "device": "cuda", "dtype": "bf16", "compile": true}}'

`bench mfu` runs eager (bf16 compute under autocast over f32 weights, as weft's mixed
precision) and, when asked, `torch.compile` of the same model; a compile failure is reported,
not fatal. Exits with status 3 and a message when PyTorch (or its CUDA support, for a CUDA
run) is missing.
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
        s.register_buffer("cos", ang.cos(), persistent=False)
        s.register_buffer("sin", ang.sin(), persistent=False)

    def forward(s, x, tt, y):
        b, t, h, w, c = x.shape
        pt, ph, pw = s.p
        tok = x.view(b, t // pt, pt, h // ph, ph, w // pw, pw, c).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, pt * ph * pw * c)
        f = torch.exp(-math.log(10000) * torch.arange(128, device=tt.device) / 128)[None] * (tt[:, None] * 1000)
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
        s.register_buffer("cos", ang.cos(), persistent=False)
        s.register_buffer("sin", ang.sin(), persistent=False)
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


def bench_on(model, make_batch, loss_fn, steps, accum, device, dtype):
    """Median seconds of a training step (accum micro-batches) on `device`."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    amp = dtype == "bf16"
    times = []
    for i in range(steps + 2):
        batches = [make_batch() for _ in range(accum)]
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for b in batches:
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model, b) / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def mfu(spec):
    device = spec["device"]
    if device == "cuda" and not torch.cuda.is_available():
        print("this PyTorch has no CUDA device", file=sys.stderr)
        sys.exit(3)
    if device == "cpu":
        torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    m, b, kind = spec["model"], spec["batch"], spec["kind"]
    dev = torch.device(device)
    if kind == "dit":
        make = lambda: Dit(m)
        mk = lambda: (
            torch.randn(b, *m["latent"], device=dev),
            torch.rand(b, device=dev),
            torch.randint(0, m["num_classes"], (b,), device=dev),
            torch.randn(b, *m["latent"], device=dev),
        )
        lf = lambda mod, x: F.mse_loss(mod(x[0], x[1], x[2]).float(), x[3])
    else:
        make = lambda: Gpt(m)
        v, t = m["vocab_size"], m["seq_len"]
        mk = lambda: (torch.randint(0, v, (b, t), device=dev), torch.randint(0, v, (b, t), device=dev))
        lf = lambda mod, x: mod(*x)
    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    args = (spec["steps"], spec.get("grad_accum", 1), device, spec["dtype"])
    model = make().to(dev)
    out["eager_step_s"] = bench_on(model, mk, lf, *args)
    if spec.get("compile"):
        try:
            out["compile_step_s"] = bench_on(torch.compile(model), mk, lf, *args)
        except Exception as e:  # a compiler failure is a result to report, not a crash
            out["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    print(json.dumps(out))


def main():
    spec = json.loads(sys.argv[1])
    if "mfu" in spec:
        return mfu(spec["mfu"])
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
