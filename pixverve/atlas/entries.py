"""One atlas entry per image (``notes/atlas-contract.md``) from what ``records.read_shard`` read:
the image to show, the stage 4 seams and judged patches, the instances, tags, captions and
aesthetics -- every overlay in the pixels of the image shown (the SR output when there is one).
Pyramids are built by the shard job (``build_shard``), never here."""

from __future__ import annotations

import json
from pathlib import Path

from pixverve.atlas import records

MAX_POLYGON_POINTS = 64


def _json_list(text) -> list:
    if not text:
        return []
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _stage_fields(image: dict, table_prefix: str) -> dict:
    for e in image["stages"]:
        if e["table"].startswith(table_prefix):
            return e["fields"]
    return {}


def final_and_source(image: dict, source_path: Path | None) -> tuple[dict | None, dict | None]:
    """(the image shown, the source beside it): the SR output when stage 3 wrote one."""
    up = next((e for e in image["stages"] if e["stage"] == "upscale" and e["verdict"] == "passed"), None)
    if up and up["fields"].get("output_path"):
        scale = int(up["fields"].get("scale") or 1)
        final = {
            "path": up["fields"]["output_path"],
            "label": f"SR output (x{scale}, {up['fields'].get('backend', '?')})",
        }
        source = {"path": str(source_path), "label": "source", "scale": scale} if source_path else None
        return final, source
    return ({"path": str(source_path), "label": "source"} if source_path else None), None


def _polygon(mask: dict | None, width: int, height: int) -> list | None:
    """The instance mask's outline (the largest contour), in the shown image's pixels."""
    if not mask or not mask.get("counts"):
        return None
    import cv2
    import numpy as np

    from pixverve.core.views import rle_decode

    grid = rle_decode(mask).astype(np.uint8)
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    outline = max(contours, key=cv2.contourArea)
    eps = 0.5
    while len(outline) > MAX_POLYGON_POINTS:
        outline = cv2.approxPolyDP(outline, eps, True)
        eps *= 2
    sy, sx = height / grid.shape[0], width / grid.shape[1]
    return [[round(float(x) * sx, 1), round(float(y) * sy, 1)] for x, y in outline[:, 0, :]]


def overlays(image: dict, width: int | None, height: int | None) -> dict:
    seams = []
    verify = _stage_fields(image, "verify/s")
    if verify:
        worst = verify.get("max_seam_ratio")
        limit = verify.get("seam_max_ratio")
        for axis, pos, ratio in _json_list(verify.get("seams")):
            seams.append(
                {
                    "axis": axis,
                    "pos": int(pos),
                    "ratio": ratio,
                    "flagged": bool(limit is not None and ratio is not None and ratio > limit),
                    "worst": ratio == (round(worst, 4) if worst is not None else None),
                }
            )
    regions = []
    for table, rows in image["items"].items():
        if table.startswith("verify/patches/"):
            for r in rows:
                replies = _json_list(r.get("raw_replies"))
                regions.append(
                    {
                        "x": r.get("x"),
                        "y": r.get("y"),
                        "w": r.get("w"),
                        "h": r.get("h"),
                        "picked": r.get("picked") or "",
                        "status": r.get("status") or "",
                        "flagged": bool(r.get("flagged")),
                        "reason": r.get("judge_reason") or r.get("reason_detail") or "",
                        "reply": "\n\n".join(str(x) for x in replies) if replies else (r.get("error") or ""),
                    }
                )
    record = image["record"] or {}
    instances = []
    if record.get("instances") is not None:
        source_rows = record["instances"]
    else:  # no record yet (or the image left at stage 5): the masks table's kept instances
        source_rows = [
            i for i in _json_list(_stage_fields(image, "caption/masks/").get("instances")) if i.get("kept", True)
        ]
    for inst in source_rows:
        instances.append(
            {
                "box": inst.get("box"),
                "label": inst.get("label") or "",
                "description": inst.get("description") or "",
                "importance": inst.get("importance"),
                "polygon": _polygon(inst.get("mask"), width, height) if width and height else None,
            }
        )
    tags = record.get("tags")
    if tags is None:
        tags = _json_list(_stage_fields(image, "caption/tags/").get("tags"))
    return {"seams": seams, "regions": regions, "instances": instances, "tags": [str(t) for t in tags]}


def entry(image: dict, source_path: Path | None) -> dict:
    """The contract's image entry without its pyramids (``final``/``source_image`` hold the paths
    the shard job tiles; it replaces them with tile sources)."""
    idx = image["index"] or {}
    final, source = final_and_source(image, source_path)
    record = image["record"] or {}
    width = record.get("width") or _stage_fields(image, "upscale/").get("out_width") or idx.get("width")
    height = record.get("height") or _stage_fields(image, "upscale/").get("out_height") or idx.get("height")
    smoke = any(e["fields"].get("smoke") or e["fields"].get("lpips_smoke") for e in image["stages"]) or bool(
        record.get("smoke")
    )
    stages = [{k: e[k] for k in ("stage", "table", "verdict", "reason", "detail", "fields")} for e in image["stages"]]
    return {
        "image_id": image["key"],  # the page key: the content id (a duplicate file: <id>-2, ...)
        "content_id": image["image_id"],
        "name": f"{idx.get('root', '')}/{idx.get('relpath', '')}",
        "source": idx.get("source") or "",
        "licence": idx.get("licence") or "",
        "shard": idx.get("shard") or "",
        "smoke": smoke,
        "status": records.status_of(image),
        "left": image["left"],
        "final": final,
        "source_image": source,
        "thumb": None,
        "stages": stages,
        "overlays": overlays(image, width, height),
        "captions": {"long": record.get("long_caption") or "", "short": record.get("short_caption") or ""}
        if record
        else None,
        "aesthetics": record.get("aesthetics"),
        "pyramid_error": None,
        "thumb_only": False,  # atlas.pyramids: unrejected left this rejected image without pyramids
    }
