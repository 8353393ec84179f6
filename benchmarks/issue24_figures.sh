#!/usr/bin/env bash
# The figures of BENCHMARKS.md, "Figures that can be true (issue 24)": every %peak against the
# fastest product kernel any installed runtime reaches (torch, onnxruntime's MLAS, OpenVINO's
# oneDNN), measured in the same run on the same threads; the renderer's own (autotuned) chunks
# beside fixed ones; the default bf16 render against the bf16 peak; bench ENGINE latencies.
#
#     THREADS=2 OUT=issue24-figures bash benchmarks/issue24_figures.sh
#
# Run it on a quiet machine (nothing else on its cores): every line of output is one run, and
# the ratios inside a run are what survive load. The chunk autotune's choices are cached under
# $CIPS_DEPLOY_CACHE/chunks (default ~/.cache/cips-deploy); set CIPS_DEPLOY_CACHE to a fresh
# folder to time the tune itself once (step 0).
set -euo pipefail
threads=${THREADS:-2}
out=${OUT:-issue24-figures}
mkdir -p "$out"
{
    date -u
    uptime
    grep -m1 "model name" /proc/cpuinfo || true
    python -c "import torch, onnxruntime; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
    python -c "import openvino; print('openvino', openvino.__version__)" 2>/dev/null || echo "openvino: not installed"
} | tee "$out/machine.txt"

# 0. The peaks alone: every installed runtime's product kernel, fp32 and bf16.
python -c "
from cips_deploy.measure.peaks import kernel_peaks
for precision in ('fp32', 'bf16', 'int8'):
    print(precision, {k: round(v, 1) for k, v in kernel_peaks(precision, $threads).items()})
" | tee "$out/peaks.txt"

# 1. fp32 runtimes side by side: the renderer's own chunks (autotuned for torch), then fixed ones.
cips-deploy bench --preset paper256 --backend torch --backend onnxruntime --backend openvino \
    --resolution 256 --threads "$threads" --repeats 3 | tee "$out/fp32-default-chunks.txt"
cips-deploy bench --preset paper256 --backend torch --backend onnxruntime --backend openvino \
    --resolution 256 --threads "$threads" --repeats 3 --chunk-size 2048 --chunk-size 16384 | tee "$out/fp32-fixed-chunks.txt"

# 2. The default bf16 render (no --chunk-size) against the bf16 peak of the same run (issue 24:
#    >= 85%). CPUs without native bf16 (no avx512_bf16 / amx_bf16) emulate it at under 1 GFLOP/s:
#    one paper256 image then takes many minutes, so the case is skipped there.
if grep -qE "avx512_bf16|amx_bf16" /proc/cpuinfo; then
    cips-deploy bench --preset paper256 --backend torch --precision bf16 --precision fp32 \
        --resolution 256 --threads "$threads" --repeats 3 | tee "$out/bf16-default-chunks.txt"
else
    echo "no native bf16 on this CPU: the bf16 render is not measured" | tee "$out/bf16-default-chunks.txt"
fi

# 3. bench ENGINE: latency per call of the paper256 engine (exported once into the cache).
cips-deploy bench --preset paper256 --backend onnxruntime --shapes 1x2048,1x16384,4x4096 \
    --threads "$threads" --warmUp 3 --iterations 20 | tee "$out/engine-latency.txt"

# 4. The precision table's speed columns (every engine precision; quality is not load-dependent).
python benchmarks/precision_table.py --threads "$threads" --repeats 3 --skip-quality --json "$out/precision.json" \
    | tee "$out/precision-table.txt"
