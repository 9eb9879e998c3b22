#!/usr/bin/env bash
# Wheels of the packages run_gpu.sh needs that a bare GPU machine's image may lack, at the versions of
# this checkout's .venv, for CPython 3.12 on x86-64 Linux; they land in .whl/, which run_gpu.sh installs.
# Usage (here, after `make install`): bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
packages="datasets dill multiprocess pyautoattack"
# Liger-Kernel for `run_gpu.sh ... vocab` (pure Python; the GPU machine's own triton runs it), at its pin.
liger=$(sed -n 's/^liger-kernel==/liger-kernel==/p' requirements/bench-vocab.txt)
pins=$(.venv/bin/python - $packages <<'PY'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
platforms=""
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  platforms="$platforms --platform ${tag}_x86_64"
done
# shellcheck disable=SC2086
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  $platforms -d .whl $pins
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .whl "$liger"
ls -1 .whl
