#!/usr/bin/env bash
# Rebuild the demo model bundle (models/demo_bundle: nodule, thyroid, llnm) from phantoms.
# Synthetic data only: NOT FOR CLINICAL USE. About 2 hours 45 minutes on 2 CPU cores.
# The segmenters learn from 200 phantoms of seed 1, LLNM-Net from 4,000 (a superset:
# case i of a seed is the same case whatever --n is).
# Usage: bash scripts/train_demo_bundle.sh [SCRATCH_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="${1:-$(mktemp -d -t llnm-demo-bundle-XXXXXX)}"
bundle=models/demo_bundle
node=.venv/bin/llnm-node

"$node" phantom --n 200 --out "$scratch/phantoms" --seed 1
"$node" phantom --n 4000 --out "$scratch/phantoms-llnm" --seed 1
"$node" train-seg nodule --data "$scratch/phantoms" --out "$scratch/nodule" \
    --epochs 50 --batch-size 8 --seed 0 --patience 15 --learning-rate 2e-3 --half
"$node" train-seg thyroid --data "$scratch/phantoms" --out "$scratch/thyroid" \
    --epochs 15 --batch-size 8 --seed 0 --patience 5 --height 192 --width 256 --half
"$node" train --data "$scratch/phantoms-llnm" --out "$scratch/llnm" --size tiny --epochs 20 \
    --patience 8 --seed 0 --text-tokens 128 --input-dropout 0.3 --learning-rate 5e-4 --half
for target in nodule thyroid; do
  mkdir -p "$bundle/$target"
  cp "$scratch/$target"/{model.safetensors,config.json,metrics.json,training_curve.png} \
    "$bundle/$target/"
done
mkdir -p "$bundle/llnm"
cp "$scratch/llnm"/{model.safetensors,config.json,metrics.json,training_curve.png} \
  "$scratch/llnm"/validation_{roc,calibration}.png "$bundle/llnm/"
"$node" bundle seal "$bundle" --name llnm-demo --version 0.4.0
# The scope gate's statistics (view limits, OOD thresholds) from the training seed.
"$node" bundle fit-scope "$bundle" --phantoms 300 --validation-phantoms 150 --seed 1
# The population location risk map: templates and maps from 1,000 phantoms of seed 301.
"$node" phantom --n 1000 --out "$scratch/phantoms-risk-map" --seed 301
"$node" risk-map build --data "$scratch/phantoms-risk-map/dataset" --bundle "$bundle"
