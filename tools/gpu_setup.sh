#!/usr/bin/env bash
# On the offline GPU machine, from the project root: the shared set-up (torch + CUDA already
# there; compressai, papermill, ... from ../shared/gpu/wheels), then icm_lib's own extra wheels
# from .gpu-wheels/ (fetched beforehand with tools/gpu_wheels.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/gpu/setup.sh
if ! ls .gpu-wheels/constriction-*.whl >/dev/null 2>&1; then
  echo "no .gpu-wheels/constriction-*.whl: run tools/gpu_wheels.sh where a registry is reachable" >&2
  exit 2
fi
python3 -m pip install -q --no-index --no-deps .gpu-wheels/*.whl
python3 -c "import constriction, icm_lib.entropy; print('constriction', constriction.__version__ if hasattr(constriction, '__version__') else 'ok')"
