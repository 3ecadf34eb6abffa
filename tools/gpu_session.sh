#!/usr/bin/env bash
# One call on a lent GPU machine (an offline CUDA box whose python3 has torch): install, time the
# `paper` training step (`bench paper-step --fast both`: the step flags off and on in one run),
# run the `gpu` tests, then as much of a profile's experiments as a time box allows, in the
# order of `make experiments` (MINUTES=0: none). Load-or-compute throughout: the committed
# results files are copied into the output first, so every run they hold is read, not
# retrained, and every run finished here is in the packed results when the box ends.
#
#   here, once:  cp -r ../shared/gpu .gpu-kit      # git-ignored (~21 MB): setup.sh + wheels
#   there:       bash tools/gpu_session.sh [PROFILE] [MINUTES]       (carry .gpu-kit along)
#   then here:   tar xzf <out>/results.tar.gz -C /tmp && compare, commit what is new
#
# Boxes in seconds (environment): STEP_SECONDS (paper-step, default 240; 0 skips it),
# TEST_SECONDS (the gpu tests, default 300); GPU_TESTS: the test paths in the order to run them
# (default: the CUDA checks first -- coding across devices, the fold, a recognizer training
# resumed on CUDA -- the `paper` step next, the notebooks on CUDA, about a minute each, last, so
# that a short box still reaches the first ones). detectron2 and mmcv have no wheel for such a
# machine, so the paper step runs the same architectures from torchvision and smp
# (ResNeXt-101 32x8d FPN Faster R-CNN, DeepLabV3+ R101), and the tests that need them skip.
#
# Writes into $OUT (the device tool's output folder; else outputs/gpu-session): setup.log,
# paper-step.log, gpu-tests.log, experiments.log, results.tar.gz (results/*.json at the end).
# The study steps after the pilot run only once the profile holds the λ its pilot chose
# (`python -m icm_lib.pilot --check`); until then the session stops after the pilot.
set -uo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-cpu-patterns}
MINUTES=${2:-8}
STEP_SECONDS=${STEP_SECONDS:-240}
TEST_SECONDS=${TEST_SECONDS:-300}
read -r -a GPU_TESTS <<<"${GPU_TESTS:-tests/test_gpu.py tests/test_recognition.py tests/test_paper_profile.py tests/test_notebooks.py}"
KIT=${GPU_KIT:-.gpu-kit}
OUT=${OUT:-$PWD/outputs/gpu-session}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
res=$(mktemp -d)/results
mkdir -p "$res"
pack() { tar czf "$OUT/results.tar.gz" -C "$(dirname "$res")" results; }
trap pack EXIT

if [ ! -f "$KIT/setup.sh" ]; then
  echo "no $KIT/setup.sh: copy ../shared/gpu to $KIT here and carry it (see this file's head)" >&2
  exit 2
fi
if ! bash "$KIT/setup.sh" >"$OUT/setup.log" 2>&1; then
  tail -30 "$OUT/setup.log"
  exit 2
fi
tail -1 "$OUT/setup.log"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null

# the paper's training step, its flags off and on timed interleaved
if [ "$STEP_SECONDS" -gt 0 ]; then
  timeout "$STEP_SECONDS" python3 -m icm_lib.bench paper-step --backend torchvision/smp \
    --fast both --steps 8 >"$OUT/paper-step.log" 2>&1
  echo "paper-step: exit $?"
  grep -E "^(profile|task|det|seg|for) " "$OUT/paper-step.log"
fi

# the gpu tests (slow ones too), boxed so that the experiments keep their time
timeout "$TEST_SECONDS" python3 -m pytest -m gpu -v -rsfE -p no:cacheprovider -o addopts="" \
  --durations=0 "${GPU_TESTS[@]}" >"$OUT/gpu-tests.log" 2>&1
echo "gpu tests: exit $? ($(tail -1 "$OUT/gpu-tests.log"))"
grep -E " (PASSED|FAILED|ERROR|SKIPPED)|^(SKIPPED|FAILED|ERROR) " "$OUT/gpu-tests.log" | cut -c1-200
[ "$MINUTES" -gt 0 ] || exit 0

cp results/*.json "$res/"
deadline=$(($(date +%s) + MINUTES * 60))
step() {  # python -m <module> <args>, inside what is left of the box
  local left=$((deadline - $(date +%s)))
  if [ "$left" -le 30 ]; then
    echo "time box spent before: $*"
    return 1
  fi
  echo "== $* ($left s left)"
  timeout "$left" python3 -m "$@" --results-dir "$res" >>"$OUT/experiments.log" 2>&1
  local rc=$?
  echo "   exit $rc: $(grep -v '^\s*$' "$OUT/experiments.log" | tail -1)"
  return $rc
}
step icm_lib.world_check --profile "$PROFILE" &&
  step icm_lib.pilot --profile "$PROFILE" --no-progress &&
  step icm_lib.pilot --profile "$PROFILE" --check &&
  step icm_lib.study --profile "$PROFILE" --seeds 0 1 2 3 4 5 --no-progress &&
  step icm_lib.study --study ablation --profile "$PROFILE" --seeds 0 1 2 3 4 5 --no-progress &&
  step icm_lib.study --study gan --profile "$PROFILE" --seeds 0 1 2 3 4 5 --no-progress &&
  step icm_lib.gradients --profile "$PROFILE" &&
  step icm_lib.claims --profile "$PROFILE"
ls "$res"
