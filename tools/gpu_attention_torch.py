#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention, timed on the shapes `weft selftest gpu` measures.

    gpu_attention_torch.py --out torch.json [--shapes-from selftest.json] [--max-seconds S]
    gpu_attention_torch.py --compare selftest.json torch.json [--table-out FILE]

The first form measures bf16 forward and backward TFLOP/s with flash-attention's FLOP count
(forward 4*B*NH*T^2*HD, halved when causal; backward 2.5x the forward), on the attention shapes
of a weft self-test JSON when given (else T = 4k..32k, 16 heads of 128, 16k tokens per batch),
and writes JSON in weft's attention-row format. The second form prints weft and PyTorch side
by side (TFLOP/s and weft as % of PyTorch); it needs no torch.
"""

import argparse
import json
import sys
import time

SCHEMA = "weft-selftest-torch/1"


def forward_flops(b, t, nh, hd, causal):
    full = 4.0 * b * nh * hd * t * t
    return full / 2.0 if causal else full


def default_shapes():
    return [
        {"b": max(1, 16384 // t), "t": t, "nh": 16, "hd": 128, "causal": causal}
        for t in (4096, 8192, 16384, 32768)
        for causal in (True, False)
    ]


def shapes_from(path):
    with open(path) as f:
        doc = json.load(f)
    rows = doc.get("attention") or []
    keys = ("b", "t", "nh", "hd", "causal")
    return [{k: r[k] for k in keys} for r in rows if all(k in r for k in keys)]


def measure(torch, fn, min_s):
    """Seconds per call: a warm-up, then batches timed with CUDA events, best batch mean."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    one = max(start.elapsed_time(end) / 1e3, 1e-9)
    best = one
    if one < min_s / 3:
        reps = max(1, min(1000, int(min_s / 3 / one)))
        for _ in range(3):
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            torch.cuda.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3 / reps)
    return best


def run(args):
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("gpu_attention_torch: torch sees no CUDA device", file=sys.stderr)
        return 2
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def flash():
            return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                                SDPBackend.EFFICIENT_ATTENTION])
        backend = "flash, cudnn or efficient (torch.nn.attention.sdpa_kernel)"
    except ImportError:  # older torch: whatever SDPA picks
        import contextlib

        def flash():
            return contextlib.nullcontext()
        backend = "default"

    shapes = shapes_from(args.shapes_from) if args.shapes_from else default_shapes()
    deadline = time.monotonic() + args.max_seconds
    rows, skipped = [], []
    for s in shapes:
        b, t, nh, hd, causal = s["b"], s["t"], s["nh"], s["hd"], s["causal"]
        if time.monotonic() > deadline:
            skipped.append(f"attention: T={t} {'causal' if causal else 'full'} (time limit)")
            continue
        fwd = forward_flops(b, t, nh, hd, causal)
        row = dict(b=b, t=t, nh=nh, hd=hd, causal=causal, dtype="bf16", fwd_flops=fwd,
                   bwd_flops=2.5 * fwd, fwd_ms=None, bwd_ms=None, fwd_tflops=None,
                   bwd_tflops=None, error=None)
        try:
            shape = (b, nh, t, hd)
            q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            dout = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
            with flash():
                tf = measure(torch, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                             args.min_ms / 1e3)
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                tb = measure(torch, lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True),
                             args.min_ms / 1e3)
            row.update(fwd_ms=tf * 1e3, bwd_ms=tb * 1e3, fwd_tflops=fwd / tf / 1e12,
                       bwd_tflops=2.5 * fwd / tb / 1e12)
            del q, k, v, dout, out
        except Exception as e:  # an out-of-memory or a missing kernel: say so, go on
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        torch.cuda.empty_cache()
        rows.append(row)
        print(f"torch sdpa {'causal' if causal else 'full':<6} T={t:<6} B={b:<3} "
              f"fwd {fmt(row['fwd_tflops'])} TF/s  bwd {fmt(row['bwd_tflops'])} TF/s"
              + (f"  {row['error']}" if row["error"] else ""), flush=True)
    doc = dict(schema=SCHEMA, torch=torch.__version__, cuda=torch.version.cuda,
               device=torch.cuda.get_device_name(0), sdpa_backend=backend,
               attention=rows, skipped=skipped)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


def fmt(x):
    if x is None:
        return "-"
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def compare(weft_path, torch_path):
    """The side-by-side table, as text."""
    with open(weft_path) as f:
        weft = json.load(f)
    torch_rows = []
    if torch_path:
        with open(torch_path) as f:
            torch_rows = json.load(f).get("attention") or []
    key = lambda r: (r["b"], r["t"], r["nh"], r["hd"], bool(r["causal"]))  # noqa: E731
    theirs = {key(r): r for r in torch_rows}
    lines = [
        f"attention bf16, TFLOP/s (flash-attention FLOP count); weft: {weft.get('device', '?')}",
        f"{'mask':<7} {'T':>6} {'B':>3} {'NH':>3} {'HD':>4} | {'weft fwd':>9} {'torch fwd':>9} {'%':>5}"
        f" | {'weft bwd':>9} {'torch bwd':>9} {'%':>5}",
    ]
    for r in weft.get("attention") or []:
        t = theirs.get(key(r), {})

        def pct(a, b):
            return "-" if a is None or not b else f"{100.0 * a / b:.0f}"
        lines.append(
            f"{'causal' if r['causal'] else 'full':<7} {r['t']:>6} {r['b']:>3} {r['nh']:>3} {r['hd']:>4} | "
            f"{fmt(r.get('fwd_tflops')):>9} {fmt(t.get('fwd_tflops')):>9} "
            f"{pct(r.get('fwd_tflops'), t.get('fwd_tflops')):>5} | "
            f"{fmt(r.get('bwd_tflops')):>9} {fmt(t.get('bwd_tflops')):>9} "
            f"{pct(r.get('bwd_tflops'), t.get('bwd_tflops')):>5}")
    if not weft.get("attention"):
        lines.append("(the weft self-test measured no attention)")
    if not torch_path:
        lines.append("(PyTorch did not run: its columns are empty)")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the PyTorch measurements here (JSON)")
    p.add_argument("--shapes-from", help="a weft selftest JSON whose attention shapes to run")
    p.add_argument("--max-seconds", type=float, default=90.0, help="start no shape after this")
    p.add_argument("--min-ms", type=float, default=300.0, help="measuring time per case")
    p.add_argument("--compare", nargs="+", metavar=("WEFT_JSON", "TORCH_JSON"),
                   help="print weft (and PyTorch, when given) side by side")
    p.add_argument("--table-out", help="with --compare: also write the table here")
    args = p.parse_args(argv)
    if args.compare:
        if len(args.compare) > 2:
            p.error("--compare takes a weft JSON and optionally a PyTorch JSON")
        table = compare(args.compare[0], args.compare[1] if len(args.compare) > 1 else None)
        sys.stdout.write(table)
        if args.table_out:
            with open(args.table_out, "w") as f:
                f.write(table)
        return 0
    if not args.out:
        p.error("--out is required (or --compare)")
    if not args.max_seconds > 0:
        p.error("--max-seconds must be positive")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
