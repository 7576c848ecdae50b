"""Training and sampling of the three schemes (rules/train.smk): config, data, models, the
training loop and its worker, checkpoints and sampling, the training report.
"""
