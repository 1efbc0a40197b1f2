#!/usr/bin/env bash
# The main job: simulate a small dataset (later: train and reconstruct on the selected backend).
set -euo pipefail
out="${1:-demo_output}"
backend="${2:-}"
mkdir -p "$out"
ptycho simulate --output "$out/train.npz" --n-patterns 512 --N 32 --seed 1
ptycho simulate --output "$out/test.npz" --n-patterns 256 --N 32 --seed 2
echo "demo: datasets written to $out/"
