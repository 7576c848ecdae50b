"""Stage 5: stage-wise captioning, one function per step (each a rule over shards).

The chain, on the images that passed stage 4's checks 1-3 (``results/verify/verified.parquet``):

1. ``tag_shard``: an analysis copy of each SR output (long side ``caption.view_px``, block-averaged
   from the tiled TIFF one tile row at a time) is written once and used by every later step;
   tags come from the tagger (VLM tag list, CLIP over a vocabulary, or tiny), then an LLM keeps
   the tangible objects (the pruned list is always a subset of the tags; a reply that stays
   unparseable leaves the list unpruned, recorded as such -- and, with ``prune`` among
   ``caption.required_steps`` (the default), keeps the image out of the dataset).
2. ``boxes_shard``: the detector prompted with the kept tags on the view (downscaled to
   ``boxes.detect_px``) and optionally on a grid of full-resolution tiles; boxes mapped to
   full-resolution pixels and merged per label by NMS.
3. ``masks_shard``: masks from the boxes on the analysis grid; mask NMS by IoU and a minimum
   area (both config); masks stored as COCO RLE on the analysis grid.
4. (stage 4, check 4, in ``pixverve.verify_instances``) each kept instance's crop judged for artefacts.
5. ``describe_instances_shard``: per instance the crop centred on it with 5 % padding (read from
   the tiled TIFF, or from the analysis copy when that has enough pixels) and the whole image
   with the instance highlighted by its mask; the VLM returns a description and an importance.
6. ``aesthetic_analysis_shard``: the six dimensions of the paper (score + analysis each).
7. ``captions_shard``: a long caption from the image plus everything above, then a short
   caption distilled from the long one (text only).

Each step writes a status per image (``pixverve.core.health``); a failure is carried to the next
step, never read as an empty answer, and ``dataset.build_records`` admits only images whose
required steps are ok.  Every VLM reply is kept raw next to its parsed value, with the prompt template's hash and the
request options it was asked with (``*_request_options``: JSON, keys sorted).
"""

from __future__ import annotations

import copy
import json

import numpy as np

from pixverve.core.health import gate_table, step_ok
from pixverve.core.tables import MODEL_ERROR, MODEL_ERRORS, chunks, id_columns, model_error_text
from pixverve.core.views import (
    TiledImage,
    box_nms,
    fit_within,
    highlight,
    instance_crop,
    kept_instances,
    map_box,
    mask_nms,
    read_view,
    rle_decode,
    rle_encode,
    tile_regions,
    view_file,
    write_view,
)
from pixverve.models.vlm import backend_name, prompt_text

AESTHETIC_DIMENSIONS = [  # the paper's six dimensions (ArtiMuse's), in its order
    ("composition_design", "composition & design"),
    ("visual_elements_structure", "visual elements & structure"),
    ("technical_execution", "technical execution"),
    ("originality_creativity", "originality & creativity"),
    ("theme_communication", "theme & communication"),
    ("emotion_viewer_response", "emotion & viewer response"),
]
IMAGES_PER_BATCH = 16  # images whose VLM requests are in flight together

TAGS_SCHEMA = {
    "type": "object",
    "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["tags"],
}
PRUNE_SCHEMA = {
    "type": "object",
    "properties": {"objects": {"type": "array", "items": {"type": "string"}}},
    "required": ["objects"],
}


def instance_schema(low: int, high: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "description": {"type": "string", "minLength": 1},
            "importance": {"type": "integer", "minimum": low, "maximum": high},
        },
        "required": ["description", "importance"],
    }


def aesthetic_schema(low: int, high: int) -> dict:
    dim = {
        "type": "object",
        "properties": {
            "score": {"type": "integer", "minimum": low, "maximum": high},
            "analysis": {"type": "string", "minLength": 1},
        },
        "required": ["score", "analysis"],
    }
    return {
        "type": "object",
        "properties": {k: dim for k, _ in AESTHETIC_DIMENSIONS},
        "required": [k for k, _ in AESTHETIC_DIMENSIONS],
    }


def survivors(verified, shard: str):
    """Rows of one shard that passed stage 4's checks 1-3."""
    if not len(verified):
        return verified
    return verified[(verified["shard"] == shard) & verified["passed"]].reset_index(drop=True)


def _reply_columns(res, prefix: str) -> dict:
    return {
        f"{prefix}_status": res.status,
        f"{prefix}_replies": json.dumps(res.raw_replies),
        f"{prefix}_request_options": res.request_options,
        f"{prefix}_error": res.error,
    }


def _options_of(results) -> str:
    """The request options (JSON, keys sorted) the replies of one row were asked with: the one
    object when they agree (one step, one client), else a list in the replies' order; "" for none."""
    values = [r.request_options for r in results]
    if not values:
        return ""
    if all(v == values[0] for v in values):
        return values[0]
    return json.dumps([json.loads(v) if v else None for v in values], sort_keys=True)


# ----------------------------------------------------------------------------- 1. tags


def tag_shard(verified, shard: str, config: dict, views_dir, tagger, vlm_tagger, pruner, log=print):
    """Analysis copies + tags + pruned tags for one shard; one row per image.

    ``tagger``: a model tagger (``tag(images)``) or None when ``vlm_tagger`` (a VLM backend)
    writes the tag list; ``pruner``: a VLM backend for the pruning LLM, or None when pruning is off.
    """
    import pandas as pd
    from tqdm import tqdm

    from pixverve.models.vlm import user_message

    spec = config["caption"]["tags"]
    view_px = int(config["caption"]["view_px"])
    tag_prompt, tag_sha = prompt_text(spec["prompt"])
    prune_prompt, prune_sha = prompt_text(spec["prune"]["prompt"])
    rows = []
    recs = survivors(verified, shard).to_dict("records")
    bar = tqdm(total=len(recs), desc="tags", unit="img", mininterval=2)
    for chunk in chunks(recs, IMAGES_PER_BATCH):
        views, batch = [], []
        for rec in chunk:
            try:
                with TiledImage(rec["output_path"]) as tiled:
                    view = tiled.downscaled(view_px)
                    size = (tiled.width, tiled.height)
            except (OSError, ValueError, KeyError, IndexError) as exc:  # the rest of the shard goes on; the
                # instance check rejects the image (no analysis copy), nothing downstream guesses
                rows.append(
                    id_columns(rec)
                    | {
                        "width": 0,
                        "height": 0,
                        "view_width": 0,
                        "view_height": 0,
                        "tagger_model": "",
                        "tags_raw": "[]",
                        "tags_status": "unreadable",
                        "tags_replies": "[]",
                        "tags_request_options": "",
                        "tags_error": f"SR output {rec['output_path']}: {exc}",
                        "smoke": False,
                        "candidates": [],
                        "tags": [],
                        "prune_status": "no_tags",
                        "prune_replies": "[]",
                        "prune_request_options": "",
                        "prune_error": "",
                        "prune_model": "",
                    }
                )
                log(f"{rec['relpath']}: SR output unreadable: {exc}")
                continue
            write_view(view_file(views_dir, rec["image_id"]), view)
            views.append(view)
            rows.append(
                id_columns(rec)
                | {"width": size[0], "height": size[1], "view_width": view.shape[1], "view_height": view.shape[0]}
            )
            batch.append(rows[-1])
        if not batch:
            bar.update(len(chunk))
            continue
        if tagger is not None:
            for row, tags in zip(batch, _tag_each(tagger, views, log), strict=True):
                failed = isinstance(tags, str)
                row.update(
                    tagger_model=tagger.model_name,
                    tags_raw="[]" if failed else json.dumps(tags),
                    tags_status=MODEL_ERROR if failed else "ok",
                    tags_replies="[]",
                    tags_request_options="",
                    tags_error=tags if failed else "",
                    smoke=bool(tagger.smoke),
                )
                row["candidates"] = [] if failed else [t for t, _ in tags]
        else:
            requests = [
                ("tags", r["image_id"], [user_message(tag_prompt, [fit_within(v, int(spec["vlm_px"]))])], TAGS_SCHEMA)
                for r, v in zip(batch, views, strict=True)
            ]
            for row, res in zip(batch, vlm_tagger.run_many(requests), strict=True):
                tags = _clean_tags(res.parsed["tags"]) if res.status == "ok" else []
                row.update(
                    tagger_model=vlm_tagger.model_name,
                    tags_raw=json.dumps(tags),
                    smoke=bool(vlm_tagger.smoke),
                    **_reply_columns(res, "tags"),
                )
                row["candidates"] = tags
        for row in batch:
            row["candidates"] = row["candidates"][: int(spec["max_tags"])]
        _prune(batch, pruner, prune_prompt)
        bar.update(len(chunk))
    bar.close()
    for row in rows:
        row.update(
            tags_prompt_sha=tag_sha if tagger is None else "", prune_prompt_sha=prune_sha if pruner is not None else ""
        )
        row["n_tags_raw"] = len(row["candidates"])
        row["n_tags"] = len(row["tags"])
        row["tags"] = json.dumps(row["tags"])
        del row["candidates"]
        log(f"{row['relpath']}: {row['n_tags_raw']} tags -> {row['n_tags']} kept ({row['prune_status']})")
    table = pd.DataFrame(rows)
    gate_table(
        table, "caption_tags", "tags_status", "tags_error", config, "caption", backend_name(tagger or vlm_tagger)
    )
    if pruner is not None:
        gate_table(table, "caption_tags/prune", "prune_status", "prune_error", config, "caption", backend_name(pruner))
    return table


def _tag_each(tagger, views: list, log) -> list:
    """The tagger over a batch; if the batch fails, image by image, a failing image giving its
    error text instead of tags."""
    try:
        return tagger.tag(views)
    except MODEL_ERRORS:
        pass
    out = []
    for view in views:
        try:
            out.extend(tagger.tag([view]))
        except MODEL_ERRORS as exc:
            out.append(model_error_text("tagger", exc))
            log(out[-1])
    return out


def _clean_tags(tags) -> list[str]:
    seen, out = set(), []
    for t in tags:
        t = " ".join(str(t).lower().split())
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def _prune(batch: list[dict], pruner, prompt: str) -> None:
    """Keep the tangible objects among each row's candidate tags (a subset, in the tags' order)."""
    if pruner is None:
        for row in batch:
            row.update(
                tags=list(row["candidates"]),
                prune_status="off",
                prune_replies="[]",
                prune_request_options="",
                prune_error="",
                prune_model="",
            )
        return
    todo = [r for r in batch if r["candidates"]]
    requests = [
        (
            "prune_tags",
            r["image_id"],
            [{"role": "user", "content": prompt.replace("{tags}", json.dumps(r["candidates"]))}],
            PRUNE_SCHEMA,
        )
        for r in todo
    ]
    results = dict(zip([r["image_id"] for r in todo], pruner.run_many(requests) if requests else [], strict=True))
    for row in batch:
        res = results.get(row["image_id"])
        row["prune_model"] = pruner.model_name
        row["smoke"] = bool(row["smoke"] or pruner.smoke)
        if res is None:
            row.update(tags=[], prune_status="no_tags", prune_replies="[]", prune_request_options="", prune_error="")
            continue
        row.update(_reply_columns(res, "prune"))
        if res.status == "ok":
            keep = set(_clean_tags(res.parsed["objects"]))
            row["tags"] = [t for t in row["candidates"] if t in keep]
        else:  # the pruning LLM gave nothing usable: the unpruned list goes on, the status says so
            row["tags"] = list(row["candidates"])


# ----------------------------------------------------------------------------- 2. boxes


def boxes_shard(tags, config: dict, views_dir, upscaled, detector, rex_judge, log=print):
    """Boxes in full-resolution pixels per image (JSON list), from the view and optional tiles.

    ``detector``: a model detector (``detect(view, tags)``), or None when ``rex_judge`` (a VLM
    backend serving Rex-Omni) answers; its requests go out for a chunk of images at once."""
    import pandas as pd
    from tqdm import tqdm

    from pixverve.caption.models import parse_rex_boxes, rex_reply_problem
    from pixverve.models.vlm import TEXT, user_message

    spec = config["caption"]["boxes"]
    detect_px, grid = int(spec["detect_px"]), int(spec["tiles"])
    rex_prompt, rex_sha = prompt_text(spec["rex_omni"]["prompt"])
    rex_system = spec["rex_omni"].get(
        "system_prompt"
    )  # upstream's wrapper sends one; none: the server's template default
    out_paths = dict(zip(upscaled["image_id"], upscaled["output_path"], strict=True)) if len(upscaled) else {}
    if rex_judge is not None and hasattr(rex_judge, "probe_check"):  # the probe's own test: special tokens survive
        rex_judge.probe_check = lambda res: rex_reply_problem(res.parsed if isinstance(res.parsed, str) else "")
    smoke = bool(getattr(detector, "smoke", False) or getattr(rex_judge, "smoke", False))
    model = detector.model_name if detector is not None else rex_judge.model_name
    recs = tags.to_dict("records")
    rows = []
    bar = tqdm(total=len(recs), desc="boxes", unit="img", mininterval=2)
    for chunk in chunks(recs, IMAGES_PER_BATCH):
        work = []  # (row, kept tags, [(view image, full-resolution region, name)])
        for rec in chunk:
            kept_tags = json.loads(rec["tags"])
            W, H = int(rec["width"]), int(rec["height"])
            row = id_columns(rec) | {
                "width": W,
                "height": H,
                "n_views": 0,
                "replies": "[]",
                "request_options": "",
                "error": "",
                "status": "ok" if kept_tags else "no_tags",
            }
            if not step_ok(
                rec.get("tags_status", "ok")
            ):  # no boxes because the tagger failed, not because nothing is there
                row.update(status=f"tags_{rec['tags_status']}", error=rec["tags_error"])
            views = []
            if kept_tags:
                view = read_view(views_dir, rec["image_id"])
                views = [(fit_within(view, detect_px), (0, 0, W, H), "view")]
                if grid > 1:
                    with TiledImage(out_paths[rec["image_id"]]) as tiled:
                        for i, region in enumerate(tile_regions(W, H, grid, float(spec["tile_overlap"]))):
                            views.append((fit_within(tiled.read(*region), detect_px), region, f"tile{i}"))
            row["n_views"] = len(views)
            work.append((row, kept_tags, views))
        found_by_row: list[list[dict]] = [[] for _ in work]
        if detector is not None:
            for k, (row, kept_tags, views) in enumerate(work):
                try:
                    for image, region, name in views:
                        for d in detector.detect(image, kept_tags):
                            found_by_row[k].append(
                                d | {"box": map_box(d["box"], (image.shape[1], image.shape[0]), region), "view": name}
                            )
                except MODEL_ERRORS as exc:
                    found_by_row[k] = []
                    row.update(status=MODEL_ERROR, error=model_error_text("detector", exc))
                    log(f"{row['relpath']}: {row['error']}")
        else:
            requests, where = [], []
            for k, (row, kept_tags, views) in enumerate(work):
                prompt = rex_prompt.replace("{tags}", ", ".join(kept_tags))
                system = [{"role": "system", "content": rex_system}] if rex_system else []
                for image, region, name in views:
                    requests.append(
                        ("boxes", f"{row['image_id']}:{name}", system + [user_message(prompt, [image])], TEXT)
                    )
                    where.append((k, image.shape[1], image.shape[0], region, name))
            replies: list[list] = [[] for _ in work]
            problems: list[list[str]] = [[] for _ in work]
            for (k, vw, vh, region, name), res in zip(
                where, rex_judge.run_many(requests) if requests else [], strict=True
            ):
                replies[k].append(res)
                text = res.parsed if res.status == "ok" else ""
                problem = rex_reply_problem(text)
                if problem:  # zero boxes here is the server's doing, not an empty image: say so
                    problems[k].append(f"{name}: {problem}")
                for d in parse_rex_boxes(text, vw, vh, int(spec["rex_omni"]["bins"])):
                    found_by_row[k].append(d | {"box": map_box(d["box"], (vw, vh), region), "view": name})
            for k, (row, _, _) in enumerate(work):
                row["replies"] = json.dumps([r.raw_replies for r in replies[k]])
                row["request_options"] = _options_of(replies[k])
                bad = [r.status for r in replies[k] if r.status != "ok"]
                if bad:
                    row["status"] = "judge_" + bad[0]
                elif problems[k]:
                    row["status"] = "special_tokens_stripped"
                    log(f"{row['relpath']}: {problems[k][0]}")
                row["error"] = "; ".join([r.error for r in replies[k] if r.error] + problems[k])
        for (row, _, _), found in zip(work, found_by_row, strict=True):
            boxes = _merge_boxes(found, float(spec["nms_iou"]), int(spec["max_boxes"]))
            row.update(
                boxes=json.dumps(boxes),
                n_boxes=len(boxes),
                n_raw_boxes=len(found),
                smoke=smoke,
                detector=model,
                prompt_sha=rex_sha if detector is None else "",
            )
            rows.append(row)
            log(f"{row['relpath']}: {len(found)} raw boxes -> {len(boxes)} after NMS over {row['n_views']} views")
        bar.update(len(chunk))
    bar.close()
    table = pd.DataFrame(rows)
    own = (
        table[~table["status"].str.startswith("tags_")] if len(table) else table
    )  # the tagger's failures were gated there
    gate_table(own, "caption_boxes", "status", "error", config, "caption", backend_name(detector or rex_judge))
    return table


def _merge_boxes(found: list[dict], iou: float, max_boxes: int) -> list[dict]:
    """NMS per label over all views; boxes rounded to 0.01 px; highest score first, then position."""
    kept = []
    for label in sorted({d["label"] for d in found}):
        group = [d for d in found if d["label"] == label]
        for i in box_nms([d["box"] for d in group], [d["score"] for d in group], iou):
            kept.append(group[i])
    kept.sort(key=lambda d: (-d["score"], d["box"][1], d["box"][0], d["label"]))
    return [
        {
            "label": d["label"],
            "phrase": d["phrase"],
            "score": round(float(d["score"]), 6),
            "box": [round(float(v), 2) for v in d["box"]],
            "view": d["view"],
        }
        for d in kept[:max_boxes]
    ]


# ----------------------------------------------------------------------------- 3. masks


def masks_shard(boxes, config: dict, views_dir, segmenter, log=print):
    """Instances per image: box + mask (RLE on the analysis grid) + NMS outcome (JSON list)."""
    import pandas as pd
    from tqdm import tqdm

    spec = config["caption"]["masks"]
    cap = spec.get("max_instances")
    rows = []
    for rec in tqdm(boxes.to_dict("records"), desc="masks", unit="img", mininterval=2):
        found = json.loads(rec["boxes"])
        W, H = int(rec["width"]), int(rec["height"])
        instances = []
        status, error = "ok", ""
        if not step_ok(rec.get("status", "ok")):  # an earlier model failed on this image: carried to the instance check
            status, error = rec["status"], rec.get("error", "")
        masks = None
        if found:
            view = read_view(views_dir, rec["image_id"])
            sx, sy = view.shape[1] / W, view.shape[0] / H
            view_boxes = [[b["box"][0] * sx, b["box"][1] * sy, b["box"][2] * sx, b["box"][3] * sy] for b in found]
            try:
                masks, mask_scores = segmenter.segment(view, view_boxes)
            except MODEL_ERRORS as exc:
                status, error = MODEL_ERROR, model_error_text("segmenter", exc)
                log(f"{rec['relpath']}: {error}")
        if masks is not None:
            scores = [b["score"] * s for b, s in zip(found, mask_scores, strict=True)]
            kept, dropped = mask_nms(masks, scores, float(spec["nms_iou"]), float(spec["min_area_fraction"]))
            if cap is not None and len(kept) > int(cap):  # the highest-scoring ones stay
                by_score = sorted(kept, key=lambda i: (-scores[i], i))
                for i in by_score[int(cap) :]:
                    dropped[i] = f"cap: more than caption.masks.max_instances={cap}"
                kept = sorted(by_score[: int(cap)])
            for i, (b, m) in enumerate(zip(found, masks, strict=True)):
                instances.append(
                    {
                        "instance": i,
                        "label": b["label"],
                        "box": b["box"],
                        "det_score": b["score"],
                        "mask_score": round(float(mask_scores[i]), 6),
                        "score": round(float(scores[i]), 6),
                        "area_fraction": round(float(np.count_nonzero(m) / m.size), 6),
                        "kept": i in kept,
                        "drop_reason": dropped.get(i, ""),
                        "mask": rle_encode(m),
                    }
                )
        n_kept = sum(1 for x in instances if x["kept"])
        rows.append(
            id_columns(rec)
            | {
                "width": W,
                "height": H,
                "instances": json.dumps(instances),
                "n_candidates": len(instances),
                "n_instances": n_kept,
                "status": status,
                "error": error,
                "segmenter": segmenter.model_name,
                "smoke": bool(segmenter.smoke or rec["smoke"]),
            }
        )
        log(f"{rec['relpath']}: {len(instances)} masks -> {n_kept} instances after NMS/area")
    table = pd.DataFrame(rows)
    if len(table):  # the segmenter's own failures (carried ones were gated where they happened)
        own = table.assign(status=np.where(table["error"].str.startswith("segmenter"), table["status"], "ok"))
        gate_table(own, "caption_masks", "status", "error", config, "caption", backend_name(segmenter))
    return table


# ----------------------------------------------------------------------------- 5. descriptions


def describe_instances_shard(masks, instance_checks, config: dict, views_dir, upscaled, judge, log=print):
    """One row per kept instance of every image that passed the instance-level check."""
    import pandas as pd
    from tqdm import tqdm

    from pixverve.models.vlm import user_message

    spec = config["caption"]["instances"]
    low, high = spec["importance_scale"]
    schema = instance_schema(int(low), int(high))
    prompt, sha = prompt_text(spec["prompt"])
    prompt = prompt.replace("{low}", str(low)).replace("{high}", str(high))
    passed = set(instance_checks.loc[instance_checks["passed"], "image_id"]) if len(instance_checks) else set()
    out_paths = dict(zip(upscaled["image_id"], upscaled["output_path"], strict=True)) if len(upscaled) else {}
    recs = [r for r in masks.to_dict("records") if r["image_id"] in passed]
    rows = []
    for chunk in tqdm(list(chunks(recs, 4)), desc="instances", unit="batch", mininterval=2):
        requests, meta = [], []
        for rec in chunk:
            view = read_view(views_dir, rec["image_id"])
            context = fit_within(view, int(spec["context_px"]))
            with TiledImage(out_paths[rec["image_id"]]) as tiled:
                for inst in kept_instances(rec):
                    crop, region = instance_crop(tiled, view, inst["box"], float(spec["padding"]), int(spec["crop_px"]))
                    lit = highlight(context, rle_decode(inst["mask"]))
                    text = prompt.replace("{label}", inst["label"])
                    requests.append(
                        (
                            "describe_instance",
                            f"{rec['image_id']}:{inst['instance']}",
                            [user_message(text, [crop, lit])],
                            schema,
                        )
                    )
                    meta.append(
                        id_columns(rec)
                        | {
                            "instance": inst["instance"],
                            "label": inst["label"],
                            "crop_x": region[0],
                            "crop_y": region[1],
                            "crop_w": region[2],
                            "crop_h": region[3],
                        }
                    )
        for m, res in zip(meta, judge.run_many(requests) if requests else [], strict=True):
            ok = res.status == "ok"
            rows.append(
                m
                | {
                    "description": res.parsed["description"].strip() if ok else None,
                    "importance": int(res.parsed["importance"]) if ok else None,
                    "status": res.status,
                    "replies": json.dumps(res.raw_replies),
                    "request_options": res.request_options,
                    "error": res.error,
                    "attempts": res.attempts,
                    "model": judge.model_name,
                    "prompt_sha": sha,
                    "smoke": bool(judge.smoke),
                }
            )
    columns = [
        "image_id",
        "root",
        "relpath",
        "shard",
        "instance",
        "label",
        "crop_x",
        "crop_y",
        "crop_w",
        "crop_h",
        "description",
        "importance",
        "status",
        "replies",
        "request_options",
        "error",
        "attempts",
        "model",
        "prompt_sha",
        "smoke",
    ]
    table = pd.DataFrame(rows, columns=columns)
    if len(table):
        table["importance"] = table["importance"].astype("Int64")
    log(
        f"{len(recs)} images, {len(table)} instances described, {int((table['status'] != 'ok').sum()) if len(table) else 0} without a valid reply"
    )
    gate_table(table, "caption_instances", "status", "error", config, "caption", backend_name(judge))
    return table


# ----------------------------------------------------------------------------- 6. aesthetics


# ArtiMuse's published decoding of its aesthetic analysis (src/eval/eval_image.py: generation_config
# = dict(max_new_tokens=8192, do_sample=False, ...)): greedy, up to 8192 new tokens.
ARTIMUSE_ANALYSIS_DECODING = {"temperature": 0.0, "max_tokens": 8192}


def aesthetics_vlm_overrides(config: dict) -> dict:
    """The aesthetic step's ``vlm`` overrides; with ``caption.aesthetics.backend: artimuse`` the
    chat template rendering ArtiMuse's own conversation (from the user's checkout) is added, and
    upstream's decoding (``ARTIMUSE_ANALYSIS_DECODING``) unless ``caption.aesthetics.vlm`` sets
    temperature/max_tokens itself."""
    spec = config["caption"]["aesthetics"]
    overrides = copy.deepcopy(spec.get("vlm") or {})
    if spec.get("backend", "rubric") == "artimuse":
        from pixverve.models.aesthetics import artimuse_request_setup
        from pixverve.models.artimuse_upstream import stop_strings

        upstream, extra = artimuse_request_setup(spec.get("artimuse") or {}, "caption.aesthetics.artimuse")
        # upstream's analysis stops at the template's separator (<|im_end|>): without it a server
        # that does not end there writes up to 8192 tokens past the answer
        extra = {"stop": stop_strings(upstream["conversation"])} | extra
        overrides["extra_body"] = dict(overrides.get("extra_body") or {}) | extra
        for key, value in ARTIMUSE_ANALYSIS_DECODING.items():
            overrides.setdefault(key, value)
    return overrides


def artimuse_dimension_prompts(spec: dict) -> dict[str, str]:
    """{our dimension key: ArtiMuse's trained per-attribute question} for the paper's six
    dimensions, read from the checkout (its attributes matched to ours by name)."""
    from pixverve.models.artimuse_upstream import attribute_prompts

    upstream = attribute_prompts((spec.get("artimuse") or {}).get("upstream"), "caption.aesthetics.artimuse.upstream")
    by_name = {a.lower(): q for a, q in upstream.items()}
    missing = [label for _, label in AESTHETIC_DIMENSIONS if label not in by_name]
    if missing:
        raise ValueError(
            f"config key caption.aesthetics.artimuse.upstream: the checkout's AESTHETIC_ATTRIBUTES lack {missing}"
        )
    return {key: by_name[label] for key, label in AESTHETIC_DIMENSIONS}


def aesthetic_analysis_shard(instance_checks, config: dict, views_dir, judge, log=print):
    """The paper's six aesthetic dimensions per image, one row per image: with ``backend: rubric``
    one JSON reply (score + analysis each); with ``backend: artimuse`` ArtiMuse's own
    per-attribute question once per dimension, its free-text answer the analysis (no score)."""
    import hashlib

    import pandas as pd

    from pixverve.models.vlm import TEXT, user_message

    spec = config["caption"]["aesthetics"]
    backend = spec.get("backend", "rubric")
    low, high = spec["score_scale"]
    if backend == "artimuse":
        questions = artimuse_dimension_prompts(spec)
        sha = hashlib.sha256(json.dumps(questions, sort_keys=True).encode()).hexdigest()[:12]
    elif backend == "rubric":
        prompt, sha = prompt_text(spec["prompt"])
        prompt = prompt.replace("{low}", str(low)).replace("{high}", str(high))
        schema = aesthetic_schema(int(low), int(high))
    else:
        raise ValueError(f"config key caption.aesthetics.backend: {backend!r} is not one of rubric, artimuse")
    recs = instance_checks[instance_checks["passed"]].to_dict("records") if len(instance_checks) else []
    rows = []
    for chunk in chunks(recs, IMAGES_PER_BATCH):
        views = [fit_within(read_view(views_dir, r["image_id"]), int(spec["view_px"])) for r in chunk]
        if backend == "rubric":
            requests = [
                ("aesthetic_analysis", r["image_id"], [user_message(prompt, [v])], schema) for r, v in zip(chunk, views)
            ]
            for rec, res in zip(chunk, judge.run_many(requests), strict=True):
                ok = res.status == "ok"
                row = id_columns(rec) | {
                    "analysis": json.dumps(res.parsed, sort_keys=True) if ok else "",
                    "model": judge.model_name,
                    "prompt_sha": sha,
                    "smoke": bool(judge.smoke),
                    **_reply_columns(res, "judge"),
                }
                for key, _ in AESTHETIC_DIMENSIONS:
                    row[f"{key}_score"] = int(res.parsed[key]["score"]) if ok else None
                rows.append(row)
            continue
        requests = [
            ("aesthetic_analysis", f"{r['image_id']}:{key}", [user_message(questions[key], [v])], TEXT)
            for r, v in zip(chunk, views)
            for key, _ in AESTHETIC_DIMENSIONS
        ]
        results = judge.run_many(requests)
        n = len(AESTHETIC_DIMENSIONS)
        for i, rec in enumerate(chunk):
            per_dim = results[i * n : (i + 1) * n]
            bad = [r for r in per_dim if r.status != "ok"]
            analysis = (
                {key: {"analysis": r.parsed} for (key, _), r in zip(AESTHETIC_DIMENSIONS, per_dim)} if not bad else None
            )
            row = id_columns(rec) | {
                "analysis": json.dumps(analysis, sort_keys=True) if analysis else "",
                "model": judge.model_name,
                "prompt_sha": sha,
                "smoke": bool(judge.smoke),
                "judge_status": bad[0].status if bad else "ok",
                "judge_replies": json.dumps([r.raw_replies for r in per_dim]),
                "judge_request_options": _options_of(per_dim),
                "judge_error": "; ".join(r.error for r in bad),
            }
            for key, _ in AESTHETIC_DIMENSIONS:
                row[f"{key}_score"] = None  # ArtiMuse's analysis is prose; its score is purify's artimuse predictor
            rows.append(row)
    table = pd.DataFrame(rows)
    for key, _ in AESTHETIC_DIMENSIONS:
        if len(table):
            table[f"{key}_score"] = table[f"{key}_score"].astype("Int64")
    log(f"aesthetic analysis of {len(table)} images ({backend})")
    gate_table(table, "caption_aesthetics", "judge_status", "judge_error", config, "caption", backend_name(judge))
    return table


# ----------------------------------------------------------------------------- 7. captions


def caption_metadata(tags_row: dict, instances: list[dict], analysis: str, source_row: dict) -> dict:
    """Everything the long-caption prompt is given besides the image, most important instances first."""
    described = [i for i in instances if i.get("description")]
    described.sort(key=lambda i: (-(i.get("importance") or 0), i["instance"]))
    meta = {
        "size": f"{tags_row['width']}x{tags_row['height']}",
        "tags": json.loads(tags_row["tags"]),
        "instances": [
            {"label": i["label"], "importance": i["importance"], "description": i["description"]} for i in described
        ],
        "aesthetics": json.loads(analysis) if analysis else None,
    }
    for key in ("source", "source_caption"):
        if source_row.get(key):
            meta[key] = source_row[key]
    return meta


def captions_shard(instance_checks, tags, descriptions, aesthetics, index, config: dict, views_dir, judge, log=print):
    """Long caption (image + metadata) then short caption (from the long one), one row per image."""
    import pandas as pd

    from pixverve.models.vlm import TEXT, user_message

    spec = config["caption"]["captions"]
    long_prompt, long_sha = prompt_text(spec["long_prompt"])
    short_prompt, short_sha = prompt_text(spec["short_prompt"])
    recs = instance_checks[instance_checks["passed"]].to_dict("records") if len(instance_checks) else []
    tags_by = {r["image_id"]: r for r in tags.to_dict("records")}
    aest_by = {r["image_id"]: r["analysis"] for r in aesthetics.to_dict("records")} if len(aesthetics) else {}
    desc_by: dict[str, list] = {}
    for r in descriptions.to_dict("records") if len(descriptions) else []:
        desc_by.setdefault(r["image_id"], []).append(r)
    index_by = {r["image_id"]: r for r in index.to_dict("records")}
    rows = []
    for chunk in chunks(recs, IMAGES_PER_BATCH):
        longs = []
        for rec in chunk:
            meta = caption_metadata(
                tags_by[rec["image_id"]],
                desc_by.get(rec["image_id"], []),
                aest_by.get(rec["image_id"], ""),
                index_by.get(rec["image_id"], {}),
            )
            text = long_prompt.replace("{metadata}", json.dumps(meta, ensure_ascii=False, indent=1))
            view = fit_within(read_view(views_dir, rec["image_id"]), int(spec["view_px"]))
            longs.append(("long_caption", rec["image_id"], [user_message(text, [view])], TEXT))
        long_results = judge.run_many(longs)
        shorts = [
            (
                "short_caption",
                rec["image_id"],
                [{"role": "user", "content": short_prompt.replace("{long_caption}", res.parsed)}],
                TEXT,
            )
            for rec, res in zip(chunk, long_results, strict=True)
            if res.status == "ok"
        ]
        short_results = dict(zip([s[1] for s in shorts], judge.run_many(shorts) if shorts else [], strict=True))
        for rec, long_res in zip(chunk, long_results, strict=True):
            short_res = short_results.get(rec["image_id"])
            long_caption = long_res.parsed if long_res.status == "ok" else None
            short_caption = short_res.parsed if short_res is not None and short_res.status == "ok" else None
            rows.append(
                id_columns(rec)
                | {
                    "long_caption": long_caption,
                    "short_caption": short_caption,
                    "long_words": len(long_caption.split()) if long_caption else 0,
                    "short_words": len(short_caption.split()) if short_caption else 0,
                    **_reply_columns(long_res, "long"),
                    **(
                        _reply_columns(short_res, "short")
                        if short_res is not None
                        else {
                            "short_status": "no_long_caption",
                            "short_replies": "[]",
                            "short_request_options": "",
                            "short_error": "",
                        }
                    ),
                    "model": judge.model_name,
                    "long_prompt_sha": long_sha,
                    "short_prompt_sha": short_sha,
                    "smoke": bool(judge.smoke),
                }
            )
    log(f"captions for {len(rows)} images")
    table = pd.DataFrame(rows)
    gate_table(table, "caption_text/long", "long_status", "long_error", config, "caption", backend_name(judge))
    gate_table(table, "caption_text/short", "short_status", "short_error", config, "caption", backend_name(judge))
    return table
