"""Stage 5, annotation (rules/caption.smk): tags, boxes, masks, instance descriptions, aesthetic
analysis, captions, the annotation records and the dataset export.
"""
