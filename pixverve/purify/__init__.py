"""Stage 2, preliminary purification (rules/purify.smk): the classical measures, the aesthetic
scores per shard, the pool-level decisions.
"""
