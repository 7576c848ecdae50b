"""Shared by every stage, imports no stage: image reading, config helpers, stage tables, figures,
source roots and paths, tiled TIFF I/O, views and crops of tiled images (boxes, masks).
"""
