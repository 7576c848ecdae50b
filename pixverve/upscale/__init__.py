"""Stage 3, super-resolution (rules/upscale.smk): tiered tiled SR, the SR weights, the ODTSR runner."""
