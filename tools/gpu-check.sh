#!/usr/bin/env bash
# The check of a one-GPU machine (H100/H200) from a stripped release `weft` built elsewhere:
# no Rust toolchain and no network needed, only the driver, the CUDA libraries and, for the
# PyTorch comparison, Python with torch.
#
#   tools/gpu-check.sh [--weft PATH] [--out DIR] [--quick]
#
#   --weft PATH  the weft binary (default: $WEFT, else ./weft)
#   --out DIR    where results go (default: $OUT, else ./gpu-check-out)
#   --quick      small shapes (a dry run of the script itself)
#
# Steps, each under its own timeout, all within 8 minutes:
#   1. nvidia-smi (what the machine is);
#   2. `weft selftest gpu --out DIR/selftest.json`: every op against the CPU, GEMM and
#      attention throughput;
#   3. where PyTorch imports and sees the GPU, tools/gpu_attention_torch.py on the same
#      attention shapes (DIR/torch_attention.json);
#   4. weft and PyTorch side by side (DIR/attention_side_by_side.txt);
#   5. training on the GPU against the CPU backend (tools/gpu_train_check.py): the mesh matrix
#      on thread ranks sharing the GPU, and dit-tiny in bf16 (DIR/train_check.txt/.json);
#   6. `weft bench mfu` of dit-1b and llama-1b in bf16 on the GPU, next to PyTorch eager on the
#      same model (DIR/mfu-*.log, DIR/mfu/*/bench_mfu.json); and a summary of what ran
#      (DIR/summary.txt).
# Exit status: 0 when the self-test passed and every step ran, 1 otherwise, 2 on bad usage.

set -u

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }

weft="${WEFT:-./weft}"
out="${OUT:-./gpu-check-out}"
quick=()
while [ $# -gt 0 ]; do
    case "$1" in
        --weft) [ $# -ge 2 ] || { echo "gpu-check: --weft needs a path" >&2; exit 2; }; weft="$2"; shift 2 ;;
        --out) [ $# -ge 2 ] || { echo "gpu-check: --out needs a directory" >&2; exit 2; }; out="$2"; shift 2 ;;
        --quick) quick=(--quick); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu-check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

here="$(cd "$(dirname "$0")" && pwd)"
torch_py="$here/gpu_attention_torch.py"
# Seconds for all steps: 8 minutes less a margin (GPU_CHECK_BUDGET may only lower it).
budget=470
if [ -n "${GPU_CHECK_BUDGET:-}" ]; then
    case "$GPU_CHECK_BUDGET" in
        ''|*[!0-9]*) echo "gpu-check: GPU_CHECK_BUDGET='$GPU_CHECK_BUDGET' is not a whole number of seconds" >&2; exit 2 ;;
    esac
    [ "$GPU_CHECK_BUDGET" -lt "$budget" ] && budget="$GPU_CHECK_BUDGET"
fi
start=$SECONDS

if [ ! -f "$weft" ] || [ ! -x "$weft" ]; then
    echo "gpu-check: no executable weft at '$weft' (set WEFT or pass --weft; build it with" >&2
    echo "  cargo build --release --features cuda -p weft-launcher && strip target/release/weft)" >&2
    exit 2
fi
if ! command -v timeout >/dev/null 2>&1; then
    echo "gpu-check: 'timeout' (coreutils) is missing; refusing to run steps that could hang" >&2
    exit 2
fi
mkdir -p "$out" || { echo "gpu-check: cannot create '$out'" >&2; exit 2; }

summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
status=0

# A step's time limit: its own, or what is left of the budget (at least 5 s).
limit() {
    local left=$((budget - (SECONDS - start)))
    [ "$left" -lt 5 ] && left=5
    [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}

# run NAME SECONDS LOG CMD...: runs CMD under a timeout, output to the terminal and LOG.
run() {
    local name="$1" secs; secs="$(limit "$2")"; local log="$3"; shift 3
    echo "== $name (limit ${secs} s)"
    timeout -k 10 "$secs" "$@" > >(tee "$log") 2>&1
    local rc=$?
    wait 2>/dev/null
    if [ $rc -eq 0 ]; then
        note "$name: ok"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        note "$name: TIMED OUT after ${secs} s (see $log)"
    else
        note "$name: FAILED (exit $rc; see $log)"
    fi
    return $rc
}

note "gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname 2>/dev/null || echo '?'); weft: $weft; results: $out"

# 1. The machine.
if command -v nvidia-smi >/dev/null 2>&1; then
    run "nvidia-smi" 15 "$out/nvidia-smi.txt" nvidia-smi || status=1
else
    note "nvidia-smi: not run (not installed)"
fi

# 2. weft's own self-test (it stops starting cases after --max-seconds and lists the rest).
selftest_json="$out/selftest.json"
rm -f "$selftest_json"
max_s=$(( $(limit 190) - 30 ))
[ "$max_s" -lt 10 ] && max_s=10
run "weft selftest gpu" 190 "$out/selftest.log" \
    "$weft" selftest gpu ${quick[@]+"${quick[@]}"} --max-seconds "$max_s" --out "$selftest_json" || status=1
[ -f "$selftest_json" ] || note "weft selftest gpu: wrote no JSON"

# 3. PyTorch on the same shapes.
torch_json="$out/torch_attention.json"
rm -f "$torch_json"
if ! command -v python3 >/dev/null 2>&1; then
    note "pytorch sdpa: not run (no python3)"
    status=1
elif ! why="$(timeout -k 5 "$(limit 45)" python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")' 2>&1)"; then
    note "pytorch sdpa: not run (python3 cannot use torch: $(echo "$why" | tail -n 1))"
    status=1
elif [ ! -f "$torch_py" ]; then
    note "pytorch sdpa: not run ($torch_py is missing)"
    status=1
else
    shapes=()
    [ -f "$selftest_json" ] && shapes=(--shapes-from "$selftest_json")
    torch_max=$(( $(limit 70) - 20 ))
    [ "$torch_max" -lt 10 ] && torch_max=10
    min_ms=300
    [ ${#quick[@]} -gt 0 ] && min_ms=20
    run "pytorch sdpa" 70 "$out/torch_attention.log" \
        python3 "$torch_py" --out "$torch_json" ${shapes[@]+"${shapes[@]}"} --max-seconds "$torch_max" --min-ms "$min_ms" || status=1
fi

# 4. Side by side.
if [ -f "$selftest_json" ] && command -v python3 >/dev/null 2>&1 && [ -f "$torch_py" ]; then
    theirs=()
    [ -f "$torch_json" ] && theirs=("$torch_json")
    run "side by side" 15 "$out/side_by_side.log" \
        python3 "$torch_py" --compare "$selftest_json" ${theirs[@]+"${theirs[@]}"} --table-out "$out/attention_side_by_side.txt" || status=1
else
    note "side by side: not run (needs the self-test JSON and python3)"
fi

# 5. Training on the GPU against the CPU backend.
if command -v python3 >/dev/null 2>&1 && [ -f "$here/gpu_train_check.py" ]; then
    train_max=$(( $(limit 120) - 10 ))
    [ "$train_max" -lt 10 ] && train_max=10
    run "training on the gpu" 120 "$out/train_check.log" \
        python3 "$here/gpu_train_check.py" --weft "$weft" --out "$out" --config "$here/../configs/dit-tiny.toml" \
        --max-seconds "$train_max" ${quick[@]+"${quick[@]}"} || status=1
else
    note "training on the gpu: not run (needs python3 and $here/gpu_train_check.py)"
    status=1
fi

# 6. MFU of the 1B models in bf16, next to PyTorch eager.
mfu_steps=5
[ ${#quick[@]} -gt 0 ] && mfu_steps=1
for model in dit-1b llama-1b; do
    run "bench mfu $model" 45 "$out/mfu-$model.log" \
        "$weft" bench mfu "$here/../configs/$model.toml" --steps "$mfu_steps" \
        --script "$here/bench_torch.py" \
        --set 'training.device="cuda"' --set 'training.param_dtype="bf16"' \
        --set "job.out_dir=\"$out/mfu\"" || status=1
done

note "gpu-check: $((SECONDS - start)) s; $([ $status -eq 0 ] && echo 'everything ran and passed' || echo 'NOT everything ran or passed (see above)')"
note "results in $out: summary.txt, selftest.json/.log, torch_attention.json/.log, attention_side_by_side.txt, train_check.txt/.json, mfu-*.log, mfu/*/bench_mfu.json"
exit $status
