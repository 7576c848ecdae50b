"""Stage 1 sources (rules/collect.smk): Pexels/Unsplash collectors and their terms, importers of
other datasets, the synthetic prompt-to-image stream.
"""
