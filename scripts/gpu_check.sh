#!/usr/bin/env bash
# GPU readiness check for a lent CUDA machine, in at most ~5 minutes (GPU_CHECK_SECONDS, default 300):
#
#   1. the venv: `make setup` and `make setup-bench` when absent (needs PyPI and the PARAREL mirror,
#      as on any fresh machine);
#   2. `make bench DEVICE=cuda`: fp32 and TF32 matmul throughput, fast vs plain IG, the peers
#      (knowledge-neurons, Captum) beside ours, all on the GPU; the JSON lands in $OUT/bench.json;
#   3. the smoke pipeline on the GPU: `make reproduce` with a params file generated from
#      params/smoke.yaml with `device: cuda`, its own results folder and fresh caches (so nothing
#      computed on a CPU is reused), under .cache/gpu_check/.
#
# Logs and results go to $OUT when set (a lent machine's output folder), else .cache/gpu_check/out.
# Every step runs under `timeout`, sized from what is left of the budget. Safe on a CPU-only
# machine: it says there is no GPU and exits 2 before doing anything else.
#
#   bash scripts/gpu_check.sh            # exit 0: every step passed
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${GPU_CHECK_SECONDS:-300}
START=$(date +%s)
WORK=.cache/gpu_check
OUT_DIR=${OUT:-$WORK/out}
mkdir -p "$OUT_DIR" "$WORK"
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"
PY=.venv/bin/python
export PYTHONUNBUFFERED=1

say() { echo "gpu_check: $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
# step NAME CAP_SECONDS LOGFILE COMMAND...: run with a timeout of min(CAP, time left - reserve)
FAILED=()
step() {
    local name=$1 cap=$2 logfile=$3
    shift 3
    local t
    t=$(left)
    t=$((t - 5))
    ((t > cap)) && t=$cap
    if ((t < 10)); then
        say "$name: SKIPPED, budget of ${BUDGET}s spent"
        FAILED+=("$name (no time)")
        return 1
    fi
    say "$name: $* (timeout ${t}s, log $logfile)"
    local s rc
    s=$(date +%s)
    timeout --kill-after=10 "$t" "$@" >"$logfile" 2>&1
    rc=$?
    if ((rc == 0)); then
        say "$name: ok in $(($(date +%s) - s))s"
    else
        ((rc == 124 || rc == 137)) && say "$name: TIMED OUT after ${t}s" || say "$name: FAILED (exit $rc)"
        tail -n 25 "$logfile" | sed 's/^/    /' | tee -a "$LOG"
        FAILED+=("$name")
    fi
    return $rc
}

# ---------------------------------------------------------------- is there a GPU at all?
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    say "no NVIDIA GPU here (nvidia-smi missing or sees no device): nothing to check; run this on a CUDA machine"
    exit 2
fi
nvidia-smi -L | tee -a "$LOG"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"

# ---------------------------------------------------------------- environment
if [[ ! -x $PY ]]; then
    step "make setup" 200 "$OUT_DIR/setup.log" make setup ||
        { say "no venv and make setup failed: this machine needs PyPI (or a prepared .venv); see setup.log"; exit 3; }
fi
# the bench extra and the data, when not there yet (both are quick when they are)
step "make setup-bench data" 120 "$OUT_DIR/setup_bench.log" make setup-bench data || exit 3

"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import sys, torch, transformers
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}), transformers {transformers.__version__}")
if not torch.cuda.is_available():
    print("torch sees no CUDA device: is this the CPU build of torch? (pip install torch==<pin> from the CUDA index)")
    sys.exit(2)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}: {torch.cuda.get_device_name(i)}, {p.total_memory / 2**30:.0f} GiB, "
          f"compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs")
EOF
rc=${PIPESTATUS[0]}
((rc == 0)) || { say "torch cannot use the GPU (exit $rc): see above"; exit 2; }

# ---------------------------------------------------------------- bench on cuda
step "make bench DEVICE=cuda" 170 "$OUT_DIR/bench.log" make bench DEVICE=cuda
[[ -f .cache/bench.json ]] && cp .cache/bench.json "$OUT_DIR/bench.json"

# ---------------------------------------------------------------- smoke pipeline on cuda
PARAMS="$WORK/smoke-cuda.yaml"
# a fresh start: results, caches and stamps of an earlier check go (the logs folder stays)
find "$WORK" -mindepth 1 -maxdepth 1 ! -name out -exec rm -rf {} +
rm -rf .cache/runs/"$WORK"
"$PY" - "$PARAMS" <<'EOF' 2>&1 | tee -a "$LOG"
# params/smoke.yaml with device: cuda, its own results folder, and every cache folder moved under
# .cache/gpu_check/ (a cache computed on a CPU would otherwise be read back instead of recomputed)
import sys
from pathlib import Path

import yaml

from kn_utils import io

out = Path(sys.argv[1])
base = Path("params/smoke.yaml").resolve()
params = io.load_params(base)
doc = {"extends": str(base), "results_dir": ".cache/gpu_check/results-smoke-cuda", "common": {"device": "cuda"}}
for section, values in params.items():
    if isinstance(values, dict) and section != "common":
        moved = {k: f".cache/gpu_check/{Path(str(v)).name}" for k, v in values.items()
                 if (k == "attribution_cache" or k.endswith("cache_dir")) and isinstance(v, str)}
        if moved:
            doc[section] = moved
out.write_text(yaml.safe_dump(doc, sort_keys=False))
print(f"smoke params on cuda: {out}")
EOF
step "make reproduce (smoke, cuda)" 300 "$OUT_DIR/smoke.log" make reproduce PARAMS="$PARAMS"
REPORT="$WORK/results-smoke-cuda/REPORT.md"
[[ -f $REPORT ]] && cp "$REPORT" "$OUT_DIR/smoke_REPORT.md"
if [[ -d $WORK/results-smoke-cuda ]]; then
    # which notebooks ran on which device (meta.json of each)
    grep -h '"device"' "$WORK"/results-smoke-cuda/*/meta.json 2>/dev/null | sort | uniq -c | tee -a "$LOG"
fi

say "done in $(($(date +%s) - START))s of ${BUDGET}s; logs in $OUT_DIR"
if ((${#FAILED[@]})); then
    say "FAILED: $(printf '%s; ' "${FAILED[@]}")"
    exit 1
fi
say "all steps passed"
