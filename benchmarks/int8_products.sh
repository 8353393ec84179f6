#!/usr/bin/env bash
# BENCHMARKS.md, "int8 that quantises the products": paper256 (random weights, seed 0, the
# architecture is what sets the speed) exported as fp32 and as dynamic int8, then each engine
# timed by `cips-deploy bench ENGINE` at the shapes a render sends, in one run.
#
#     THREADS=2 OUT=int8-figures bash benchmarks/int8_products.sh
#
# Random weights are no image model: the int8 export's quality report on them says little
# about a trained model's (docs/precision.md has the demo models' figures), so the gate is
# opened with --min-psnr 0 here and the report is printed as it is.
set -euo pipefail
threads=${THREADS:-2}
out=${OUT:-int8-figures}
mkdir -p "$out"
{
    date -u
    uptime
    grep -m1 "model name" /proc/cpuinfo || true
    python -c "import torch, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
} | tee "$out/machine.txt"

python -c "
import cips_deploy
from cips_deploy.families.weights import save_generator
save_generator(cips_deploy.create('paper256', seed=0), '$out/paper256.safetensors')
"
cips-deploy export "$out/paper256.safetensors" --no-validate -o "$out/fp32.onnx" --force > "$out/export-fp32.txt"
cips-deploy export "$out/paper256.safetensors" --no-validate --quantize int8 --min-psnr 0 -o "$out/int8.onnx" --force \
    | tee "$out/export-int8.txt"
for engine in fp32 int8 fp32 int8; do  # twice, interleaved: the spread is the machine's
    cips-deploy bench "$out/$engine.onnx" --shapes 1x4096,1x16384 --threads "$threads" --warmUp 2 --iterations 8 \
        | tee -a "$out/bench-$engine.txt"
done
