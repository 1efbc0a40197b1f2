#!/usr/bin/env bash
# The main job: simulate two scans of one kind of object, train a PINN on the first, reconstruct
# the second with the trained bundle, and say where the figures are.
#
#   bash scripts/demo.sh [OUTPUT_DIR [BACKEND]]      (make demo [DEMO_DIR=...] [BACKEND=...])
#
# BACKEND: tensorflow/tf or torch/pytorch; empty means $PTYCHO_BACKEND, else the default
# (see `ptycho backends`). The config is small enough to finish in about 2 minutes on two CPU
# cores also where TensorFlow is slowest (an AVX2-only EPYC): half the default widths and 20
# epochs, where the default widths (16) and 30 epochs took 4.5 minutes there for 0.04 more
# amplitude SSIM (README.md); it is written to OUTPUT_DIR/demo_config.yaml, so a longer run
# is one edit away.
# The probe is an aperture of radius N/4 behind a random phase screen, defocused (--probe
# diffuser: structured and well-overlapping, and not centro-symmetric, so that one pattern has
# no twin object: benchmarks/README.md, "The probe's symmetry"); the model trains on groups of
# 2 x 2 neighbours (gridsize 2); the test scan is reconstructed by the network and then refined
# against its own measurements (30 passes), and both are scored.
set -euo pipefail
out="${1:-demo_output}"
backend="${2:-}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if command -v ptycho >/dev/null 2>&1; then
    ptycho=(ptycho)
else   # not installed as a console script: run the package from this checkout
    ptycho=("${PYTHON:-python3}" -m ptycho)
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
backend_args=()
if [ -n "$backend" ]; then
    backend_args=(--backend "$backend")
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

mkdir -p "$out"
start=$SECONDS
"${ptycho[@]}" backends "${backend_args[@]}"

echo "== simulate: a training scan and a test scan of a different random object"
"${ptycho[@]}" simulate --output "$out/train.npz" --n-patterns 512 --N 32 --object grf \
    --probe diffuser --probe-radius 8 --nphotons 1e9 --seed 1
"${ptycho[@]}" simulate --output "$out/test.npz" --n-patterns 256 --N 32 --object grf \
    --probe diffuser --probe-radius 8 --nphotons 1e9 --seed 2

cat > "$out/demo_config.yaml" <<'YAML'
kind: training
model:
  N: 32
  gridsize: 2
  base_filters: 8
  n_filters_scale: 1
nepochs: 20
batch_size: 16
learning_rate: 0.001
nphotons: 1e9
seed: 0
YAML

echo "== train ($out/demo_config.yaml)"
"${ptycho[@]}" train --train-data "$out/train.npz" --output-dir "$out/train" \
    --config "$out/demo_config.yaml" "${backend_args[@]}"

echo "== reconstruct the test scan with the trained bundle, then refine it (30 passes)"
"${ptycho[@]}" reconstruct --model "$out/train/model.zip" --data "$out/test.npz" \
    --output-dir "$out/reconstruct" --refine 30 "${backend_args[@]}"

echo
echo "demo: done in $((SECONDS - start)) s. Figures:"
echo "  $out/train/loss.png                   training loss per epoch"
echo "  $out/reconstruct/reconstruction.png   reconstructed amplitude and phase"
echo "  $out/reconstruct/comparison.png       network and refined reconstructions against the truth"
echo "  model bundle: $out/train/model.zip (ptycho bundle inspect $out/train/model.zip)"
