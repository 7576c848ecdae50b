"""Shared model plumbing, imports no stage: the missing-weights error and device choice, the VLM
client and its back-ends (endpoint, vllm serve, transformers, tiny), the tiny model builders,
the aesthetic predictors (LAION, ArtiMuse) and the ArtiMuse upstream prompts.
"""
