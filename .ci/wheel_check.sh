#!/usr/bin/env bash
# The library from a wheel, outside the checkout: build wgfm's wheel, install it (without its
# dependencies, which the test venv already holds) into a temporary target, and run a quick
# `python -m wgfm diagnose` of a tiny random diffusers model from a temporary folder, with no
# path pointing at the source tree. Fails if the installed package reaches for experiments/ or
# benchmarks/, or if the report is not written.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PY" -m pip wheel --quiet --no-deps --wheel-dir "$TMP/dist" .
"$PY" -m pip install --quiet --no-deps --target "$TMP/site" "$TMP"/dist/wgfm-*.whl
cd "$TMP"
mkdir work && cd work
"$PY" - <<'PY'
import torch, diffusers
torch.manual_seed(0)
cfg = dict(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
           down_block_types=("DownBlock2D", "AttnDownBlock2D"), attention_head_dim=8,
           up_block_types=("AttnUpBlock2D", "UpBlock2D"))
diffusers.UNet2DModel(**cfg).save_pretrained("model/unet")
diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained("model/scheduler")
PY
# -I would also drop PYTHONPATH; -P (no script dir on sys.path) keeps the current folder out.
PYTHONPATH="$TMP/site" "$PY" -P -c "import wgfm, sys; assert wgfm.__file__.startswith('$TMP/site'), wgfm.__file__; print('wgfm from', wgfm.__file__)"
PYTHONPATH="$TMP/site" "$PY" -P -m wgfm diagnose --quick --model model --out out --no-compile-cache
test -s out/REPORT.md && test -s out/results.json
PYTHONPATH="$TMP/site" "$PY" -P -m wgfm reproduce --quick --out rep 2>err.txt && exit 1
grep -q "needs the source checkout" err.txt
echo "wheel check: diagnose ran from the installed wheel; reproduce said it needs the checkout"
