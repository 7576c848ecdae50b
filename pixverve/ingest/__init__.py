"""Stage 1 index and screening (rules/ingest.smk): the index and its shards, resolution screening,
deduplication, the stage summary, the bundled demo pool.
"""
