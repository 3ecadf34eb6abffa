#!/usr/bin/env bash
# Run on a machine with a package registry: the wheels an offline GPU machine (Python 3.12,
# set up with ../shared/gpu/setup.sh) needs beyond that folder, into .gpu-wheels/ (git-ignored;
# carry it to the GPU machine). Then, there: bash tools/gpu_setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
  --platform manylinux2014_x86_64 -d .gpu-wheels "constriction>=0.5,<0.6" \
  jupytext markdown-it-py mdit-py-plugins mdurl
ls .gpu-wheels
