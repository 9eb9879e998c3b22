#!/usr/bin/env bash
# The GPU benchmarks in one go, for a lent GPU machine that has torch/accelerate/timm but not this repo's
# other pins: wheels for the rest travel in .whl/ (pyautoattack, datasets, dill, multiprocess), which
# `bash benchmarks/gpu_wheels.sh` fills here before the repo is sent.
# Usage there: bash benchmarks/run_gpu.sh OUT_DIR [bench ...]   (default: losses attacks kd ssl adv)
set -u
out=${1:?usage: run_gpu.sh OUT_DIR [bench ...]}; shift
benches=${*:-losses attacks kd ssl adv}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# The recipes are installed as dkl_recipe_<task> packages; without pip -e, link them onto the path.
mkdir -p /tmp/recipes
for task in kd adv ssl; do ln -sfn "$PWD/recipes/$task" "/tmp/recipes/dkl_recipe_$task"; done
export PYTHONPATH=/tmp/site:/tmp/recipes:$PWD/packages/dkl-core/src:$PWD/packages/dkl-train/src:$PWD
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
# --update-committed: these runs refresh the committed figures in benchmarks/results (tarred below).
run() { echo "== $*"; timeout "$1" python3 -m benchmarks --update-committed "${@:2}" || echo "!! failed or timed out: $*"; }
for bench in $benches; do
  case $bench in
    losses) run 300 --only losses --device cuda --dtype float32 --repeats 200; run 300 --only losses --device cuda --dtype bfloat16 --repeats 200 ;;
    attacks) run 150 --only attacks --device cuda --model wrn_34_10 --all ;;
    imagenet_loader) run 400 --only imagenet_loader --device cuda ;;  # three recipe runs (synthetic, pil, gpu)
    kd_speed) run 120 --only kd_speed --device cuda ;;  # the paper's training-speed column, bf16 and fp32
    vocab) run 240 --only vocab --device cuda --shape gpu --dtype bfloat16 --no-dense ;;  # fused IKL vs Liger (its wheel in .whl)
    *) run 150 --only "$bench" --device cuda ;;
  esac
  tar czf "$out/results.tgz" benchmarks/results  # after each bench, so a timeout keeps what finished
done 2>&1 | tee "$out/log.txt"
