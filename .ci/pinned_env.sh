#!/usr/bin/env bash
# The package next to DICE-Talk's pins: a second venv with diffusers 0.29.0, transformers 4.43.2,
# accelerate 0.28.0 (the main venv keeps current releases), then the diffusion-related tests there.
#
#   .ci/pinned_env.sh                       # fresh venv in a temp dir
#   STCCL_PINNED_VENV=/path/venv .ci/pinned_env.sh   # reuse / keep a venv
#   .ci/pinned_env.sh tests/test_edm.py     # run only the given tests
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${STCCL_PINNED_VENV:-$(mktemp -d)/pinned-venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip
# A CPU build of torch keeps CI small; pip finds this release on the machine's local disk.
"$PY" -m pip install -q "torch==2.13.0"
# DICE-Talk's pins, plus what those releases need from their own dependencies:
# huggingface_hub 0.26 removed `cached_download`, which diffusers 0.29 imports;
# peft 0.12 is the last release whose import works with transformers 4.43.
"$PY" -m pip install -q \
  "diffusers==0.29.0" "transformers==4.43.2" "accelerate==0.28.0" \
  "huggingface_hub<0.26" "peft==0.12.0" "tokenizers<0.20"
"$PY" -m pip install -q --no-deps -e .
"$PY" -m pip install -q "safetensors>=0.4" "opencv-python-headless>=4.8,<5" "librosa>=0.10" numpy pyyaml tqdm \
  matplotlib scipy imageio imageio-ffmpeg tensorboard "pytest>=7" einops
"$PY" - <<'PYEOF'
import accelerate, diffusers, transformers, peft, torch
print("pinned env:", "diffusers", diffusers.__version__, "transformers", transformers.__version__,
      "accelerate", accelerate.__version__, "peft", peft.__version__, "torch", torch.__version__)
assert (diffusers.__version__, transformers.__version__, accelerate.__version__) == ("0.29.0", "4.43.2", "0.28.0")
PYEOF

if [ "$#" -gt 0 ]; then
  TESTS=("$@")
else
  TESTS=()
  for t in tests/test_edm.py tests/test_diffusion_x0.py tests/test_callback.py tests/test_callback_api.py \
           tests/test_callback_loops.py tests/test_callback_patch.py tests/test_lora_loop.py \
           tests/test_reference_dice.py \
           tests/test_train_loop.py tests/test_checkpoints.py tests/test_dice_adapter.py tests/test_ddp.py \
           tests/test_dice_talk_real.py tests/test_dice_talk_inference_match.py tests/test_dice_talk_train.py; do
    [ -f "$t" ] && TESTS+=("$t")
  done
fi
"$PY" -m pytest -q -x "${TESTS[@]}"
