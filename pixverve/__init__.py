"""PixVerve: the science of the workflow (image I/O, stages, models), importable without Snakemake."""

__version__ = "0.1.0"
