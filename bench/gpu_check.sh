#!/usr/bin/env bash
# One prepared GPU check (issue 9), under 8 minutes on a machine with one CUDA GPU. Run from the repo root:
#
#     DPGDIFF_DATA_DIR=DATA bash bench/gpu_check.sh      # Food-Kitchen if DATA has it, else synthetic
#
# 1. the tests that need CUDA (they skip without it; here a skip counts as a failure);
# 2. configs/paper.yaml (d=512, batch 512, full-softmax CE) for a fixed number of optimizer steps on the
#    GPU, then the same with loss.ce_impl=chunked: seconds per step, samples per second, peak GPU memory;
# 3. a 4-trial search (smoke space, synthetic data) with --gpus-per-trial 0.5 (two trials share the GPU).
# Ends with one line: "GPU CHECK: PASS ..." or "GPU CHECK: FAIL ...". Exit status 0 only on PASS.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS="${GPU_CHECK_STEPS:-30}"
WORK="$(mktemp -d /tmp/dpgdiff-gpu-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
fails=()
summary=()

echo "== device"
if ! timeout 60 python -c "import torch, sys; ok = torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name(0) if ok else 'NO CUDA'); sys.exit(0 if ok else 1)"; then
    echo "GPU CHECK: FAIL (torch sees no CUDA device)"
    exit 1
fi
CARD="$(python -c "import torch; print(torch.cuda.get_device_name(0))")"

echo "== 1. tests that need CUDA"
CUDA_TESTS=$(grep -l "cuda" tests/test_*.py | tr '\n' ' ')
if timeout 180 python -m pytest -q -rs $CUDA_TESTS > "$WORK/pytest.log" 2>&1 && ! grep -q "SKIPPED.*CUDA" "$WORK/pytest.log"; then
    summary+=("tests ok")
else
    fails+=("cuda tests")
fi
tail -5 "$WORK/pytest.log"

echo "== 2. configs/paper.yaml, $STEPS timed steps"
for CE in full chunked; do
    if timeout 150 python - "$STEPS" "$CE" > "$WORK/paper-$CE.log" 2>&1 <<'EOF'
import os, sys, time
import numpy as np, torch
from dpgdiff.config import Config
from dpgdiff.data import load_dataset
from dpgdiff.models import build_model
from dpgdiff.training import make_optimizer, seed_everything, train_step

steps, ce = int(sys.argv[1]), sys.argv[2]
try:
    ds, name = load_dataset("food_kitchen", "c2dsr-histories", data_dir=os.environ.get("DPGDIFF_DATA_DIR")), "food_kitchen"
except Exception as exc:  # no data on this machine: same item counts, synthetic
    print(f"note: food_kitchen unavailable ({exc}); synthetic of the same size")
    ds, name = load_dataset("synthetic", n_items_x=29207, n_items_y=34886, n_users=16579), "synthetic"
config = Config.from_yaml("configs/paper.yaml").with_overrides(["train.device=cuda", f"loss.ce_impl={ce}"])
seed_everything(0)
model = build_model(config, ds).cuda().train()
opt = make_optimizer(config, model)
ex = ds.training_examples("prefix")
rng, gen = np.random.default_rng(0), torch.Generator(device="cuda").manual_seed(0)
def batch():
    idx = rng.choice(len(ex), size=config.train.batch_size, replace=False)
    return (torch.from_numpy(ex.history[idx]).cuda(), torch.from_numpy(ex.target[idx]).cuda(),
            torch.from_numpy(ex.target_domain[idx].astype(np.int64)).cuda())
for _ in range(3):
    train_step(model, opt, *batch(), config, generator=gen)
torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
for _ in range(steps):
    values = train_step(model, opt, *batch(), config, generator=gen)
torch.cuda.synchronize()
sec = (time.perf_counter() - start) / steps
peak = torch.cuda.max_memory_allocated() / 2**30
print(f"paper d=512 ce={ce} [{name}]: {sec:.4f} s/step, {config.train.batch_size / sec:.0f} samples/s, "
      f"peak GPU memory {peak:.2f} GiB, loss {values['total']:.3f}")
EOF
    then summary+=("$(tail -1 "$WORK/paper-$CE.log" | sed 's/ \[.*\]//; s/, loss.*//')")
    else fails+=("paper steps ($CE)")
    fi
    tail -3 "$WORK/paper-$CE.log"
done

echo "== 3. 4-trial search, --gpus-per-trial 0.5"
mkdir -p "$WORK/mlruns"
if timeout 240 python tune/search.py --dataset synthetic --space search_spaces/smoke.yaml --num-samples 4 \
        --epochs 2 --scheduler fifo --gpus-per-trial 0.5 --set train.device=cuda --quiet \
        --name gpu-check --storage-path "$WORK/ray_results" --tracking-uri "sqlite:///$WORK/mlruns/mlflow.db" \
        > "$WORK/search.log" 2>&1; then
    summary+=("search 4 trials ok")
else
    fails+=("search")
fi
tail -8 "$WORK/search.log"

if [ ${#fails[@]} -eq 0 ]; then
    echo "GPU CHECK: PASS on $CARD: $(IFS=';'; echo "${summary[*]}")"
    exit 0
fi
echo "GPU CHECK: FAIL on $CARD: $(IFS=','; echo "${fails[*]}") failed; ok: $(IFS=';'; echo "${summary[*]}")"
exit 1
