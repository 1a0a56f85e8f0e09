"""Training on one GPU, checked against the CPU backend, from the `weft` binary alone (no Rust
toolchain): what tools/gpu-check.sh runs after the self-test.

    python3 tools/gpu_train_check.py --weft ./weft --out DIR [--max-seconds S] [--quick]

1. The mesh matrix on one GPU: dit-tiny in f32 on thread ranks sharing the device
   (dp_shard=2, tp=2, cp=2 ring, cp=2 Ulysses, dp_shard=2 × cp=2 × tp=2) against the same mesh
   on the CPU backend, step by step. The CPU and the GPU add in different orders (cuBLASLt's
   tiling, block reductions), about 1e-6 relative per op in f32 with TF32 off; after a few
   steps the losses must agree to 1e-4 relative. A wrong reduction (a missing 1/dp, a dropped
   shard) moves them by 1e-2 or more.
2. dit-tiny in bf16 on the GPU against the same run in f32 on the CPU: the final validation
   loss within 2 %.

Writes DIR/train_check.json and DIR/train_check.txt; exits 0 when everything ran and passed,
1 otherwise.
"""

import argparse
import json
import os
import subprocess
import sys
import time

MESHES = [
    ("dp_shard=2", {"parallel.dp_shard": 2}),
    ("tp=2", {"parallel.tp": 2}),
    ("cp=2 ring", {"parallel.cp": 2}),
    ("cp=2 Ulysses", {"parallel.cp": 2, "parallel.ulysses": 2}),
    ("dp_shard=2 x cp=2 x tp=2", {"parallel.dp_shard": 2, "parallel.cp": 2, "parallel.tp": 2}),
]
LOSS_TOL = 1e-4
VAL_TOL = 0.02


def train(weft, config, out_dir, name, sets, timeout):
    """Run `weft train`; returns (losses, last val_loss, seconds, error or None)."""
    args = [weft, "train", config, "--no-progress",
            "--set", f'job.out_dir="{out_dir}"', "--set", f'job.name="{name}"',
            "--set", "checkpoint.interval=0", "--resume", "fresh"]
    for k, v in sets.items():
        args += ["--set", f"{k}={json.dumps(v) if isinstance(v, str) else v}"]
    t0 = time.time()
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, None, time.time() - t0, f"timed out after {timeout:.0f} s"
    secs = time.time() - t0
    with open(os.path.join(out_dir, f"{name}.log"), "w") as f:
        f.write(p.stdout + p.stderr)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return None, None, secs, f"exit {p.returncode}: {tail}"
    losses, val = {}, None
    with open(os.path.join(out_dir, name, "metrics.jsonl")) as f:
        for line in f:
            m = json.loads(line)
            if "loss" in m and "step" in m and "event" not in m:
                losses[m["step"]] = m["loss"]
            if "val_loss" in m:
                val = m["val_loss"]
    return [losses[k] for k in sorted(losses)], val, secs, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weft", default="./weft")
    ap.add_argument("--out", default="gpu-check-out")
    ap.add_argument("--config", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "dit-tiny.toml"))
    ap.add_argument("--max-seconds", type=float, default=150)
    ap.add_argument("--quick", action="store_true")
    # The device of the "GPU" side; `cpu` checks this script itself on a machine without one.
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    out = os.path.abspath(os.path.join(a.out, "train_check"))
    os.makedirs(out, exist_ok=True)
    start = time.time()
    left = lambda: a.max_seconds - (time.time() - start)
    steps, long_steps = (2, 20) if a.quick else (4, 60)
    results, ok, lines = {"meshes": [], "bf16": None}, True, []

    base = {"training.steps": steps, "optimizer.warmup_steps": 1, "training.val_every": 0, "training.micro_batch": 4,
            "training.peak_flops": 1e12, "training.dtype": "f32"}
    for name, mesh in MESHES:
        if left() < 20:
            lines.append(f"{name}: not run (out of time)")
            ok = False
            continue
        sets = dict(base, **mesh)
        tag = name.replace(" ", "").replace("=", "").replace("x", "-")
        cpu = train(a.weft, a.config, out, f"mesh-{tag}-cpu", dict(sets, **{"training.device": "cpu"}), left())
        gpu = train(a.weft, a.config, out, f"mesh-{tag}-gpu", dict(sets, **{"training.device": a.device}), left())
        row = {"mesh": name, "cpu_losses": cpu[0], "gpu_losses": gpu[0], "cpu_s": cpu[2], "gpu_s": gpu[2]}
        if cpu[3] or gpu[3]:
            row["error"] = cpu[3] or gpu[3]
            lines.append(f"{name}: FAILED ({row['error']})")
            ok = False
        else:
            worst = max(abs(g - c) / abs(c) for c, g in zip(cpu[0], gpu[0]))
            same = len(cpu[0]) == len(gpu[0]) == steps and worst <= LOSS_TOL
            row["worst_rel"] = worst
            lines.append(f"{name}: {'ok' if same else 'MISMATCH'}: {steps} steps, losses agree to {worst:.2e} "
                         f"(tolerance {LOSS_TOL:.0e}); cpu {cpu[2]:.1f} s, gpu {gpu[2]:.1f} s")
            ok &= same
        results["meshes"].append(row)

    if left() > 30:
        sets = {"training.steps": long_steps, "optimizer.warmup_steps": long_steps // 6,
                "training.val_every": long_steps, "training.peak_flops": 1e12}
        cpu = train(a.weft, a.config, out, "bf16-ref-cpu", dict(sets, **{"training.device": "cpu"}), left())
        gpu = train(a.weft, a.config, out, "bf16-gpu",
                    dict(sets, **{"training.device": a.device, "training.param_dtype": "bf16"}), left())
        row = {"steps": long_steps, "cpu_f32_val": cpu[1], "gpu_bf16_val": gpu[1], "cpu_s": cpu[2], "gpu_s": gpu[2]}
        if cpu[3] or gpu[3] or cpu[1] is None or gpu[1] is None:
            row["error"] = cpu[3] or gpu[3] or "no validation loss"
            lines.append(f"bf16 on the GPU: FAILED ({row['error']})")
            ok = False
        else:
            rel = abs(gpu[1] - cpu[1]) / abs(cpu[1])
            row["rel"] = rel
            good = rel <= VAL_TOL
            lines.append(f"bf16 on the GPU: {'ok' if good else 'TOO FAR'}: validation loss {gpu[1]:.5f} vs the CPU's "
                         f"f32 {cpu[1]:.5f} after {long_steps} steps ({rel * 100:.2f} %, tolerance {VAL_TOL * 100:.0f} %)")
            ok &= good
        results["bf16"] = row
    else:
        lines.append("bf16 on the GPU: not run (out of time)")
        ok = False

    results["passed"] = ok
    with open(os.path.join(a.out, "train_check.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(a.out, "train_check.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
