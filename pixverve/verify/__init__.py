"""Stage 4, verification (rules/verify.smk): seams and post-SR fidelity (PSNR/SSIM/LPIPS), the
region- and instance-level VLM checks.
"""
