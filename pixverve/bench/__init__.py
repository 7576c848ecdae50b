"""PixVerve-Bench (rules/bench.smk): generation per method, FID/FID_patch, CLIP/FG-CLIP2, GLCM,
aesthetics, the MLLM-judged ICS/MSFI, and the tables.
"""
