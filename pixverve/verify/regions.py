"""Stage 4, check 3: region-level artefacts judged by a VLM on chosen patches of the SR output.

The paper: non-overlapping 768 px patches; judge 10 of them -- the 6 with the highest Sobel
variance plus 4 at random; drop the image if more than one is flagged.  Our precise reading:

* patches tile the SR output from its top-left corner on a ``patch_px`` grid (scaled by
  ``sqrt(target_megapixels / 100)`` like every size in config); the partial strip at the right
  and bottom edges is not a patch (only whole patches are judged); an image smaller than one
  patch is one patch of its own size;
* "Sobel variance" is the variance, inside the patch, of the Sobel gradient magnitude
  ``sqrt(gx^2 + gy^2)`` (3x3 kernels, exact integer gradients) of the BT.601 grey image, computed
  in bands of one patch row with a 1-pixel halo (a 100 MP image is never one float image);
* the 6 highest (ties: lower patch index first) are taken, then 4 drawn without replacement
  from the rest by ``numpy.random.default_rng(int(image_id, 16))`` -- reproducible per image;
* each patch goes to the judge alone with the prompt in ``prompts/region_artifact.md``; the
  reply must be JSON ``{"flagged": bool, "reason": str}``;
* a reply that stays unparseable/invalid is "unjudged": ``vlm.invalid_policy`` drop rejects the
  image, keep lets it pass with the count recorded -- never counted as a clean patch silently.
"""

from __future__ import annotations

import json

import numpy as np

IMAGES_PER_BATCH = 16  # images whose patches are judged together (10 requests each)

REGION_SCHEMA = {
    "type": "object",
    "properties": {"flagged": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["flagged", "reason"],
}


def patch_boxes(height: int, width: int, patch: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of the whole non-overlapping patches, row-major from the top-left."""
    ph, pw = min(patch, height), min(patch, width)
    return [(x, y, pw, ph) for y in range(0, height - ph + 1, ph) for x in range(0, width - pw + 1, pw)]


def sobel_variances(grey_rows, height: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Variance of the Sobel gradient magnitude inside each box (boxes on one grid), one patch row at
    a time: ``grey_rows(lo, hi)`` gives grey rows [lo, hi) (a 100 MP image is never one array)."""
    import cv2

    out = np.zeros(len(boxes), dtype=np.float64)
    by_row: dict[int, list[int]] = {}
    for i, (_, y, _, _) in enumerate(boxes):
        by_row.setdefault(y, []).append(i)
    for y, members in by_row.items():
        ph = boxes[members[0]][3]
        lo, hi = max(0, y - 1), min(height, y + ph + 1)  # a 1-pixel halo: the kernel's reach
        band = grey_rows(lo, hi)
        # int16 Sobel of uint8 is exact; the magnitude in float64 with numpy (correctly rounded)
        # gives the same bits on every machine -- cv2.magnitude's SIMD paths do not.
        gx = cv2.Sobel(band, cv2.CV_16S, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101)[y - lo : y - lo + ph]
        gy = cv2.Sobel(band, cv2.CV_16S, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101)[y - lo : y - lo + ph]
        del band
        magnitude = np.sqrt(gx.astype(np.float64) ** 2 + gy.astype(np.float64) ** 2)
        del gx, gy
        for i in members:
            x, _, pw, _ = boxes[i]
            out[i] = float(magnitude[:, x : x + pw].var())
    return out


def tiled_grey_rows(tiled):
    """``grey_rows`` for :func:`sobel_variances` read from a tiled SR output."""
    import cv2

    return lambda lo, hi: cv2.cvtColor(tiled.read(0, lo, tiled.width, hi - lo), cv2.COLOR_RGB2GRAY)


def choose_patches(variances: np.ndarray, image_id: str, n_sobel: int, n_random: int) -> list[tuple[int, str]]:
    """(patch index, why) for the patches to judge: top-``n_sobel`` by variance, then random ones."""
    order = sorted(range(len(variances)), key=lambda i: (-variances[i], i))
    top = order[:n_sobel]
    rest = sorted(order[n_sobel:])
    rng = np.random.default_rng(int(image_id, 16))
    drawn = sorted(rng.choice(rest, size=min(n_random, len(rest)), replace=False).tolist()) if rest else []
    return [(i, "sobel") for i in top] + [(int(i), "random") for i in drawn]


def judged_outcome(
    row: dict, n_judged: int, code: str, what: str, policy: str, failures: list[tuple[str, str]] = ()
) -> dict:
    """An image's verdict from its judged items (patches, instance crops): too many flagged is
    ``code``; an item the judge failed on (HTTP error, timeout, empty or refusal-like answer)
    rejects it as ``judge_failed`` -- a check that did not run is never a pass -- and one without
    a valid JSON answer as ``judge_unparseable`` under ``vlm.invalid_policy: drop``.
    ``failures``: (status, error) of every item without an ok answer."""
    from pixverve.core.health import FORMAT_FAILURES
    from pixverve.core.tables import fail, ok

    hard = [(s, e) for s, e in failures if s not in FORMAT_FAILURES]
    row["n_failed"] = len(hard)
    row["judge_status"] = (hard or failures or [("ok", "")])[0][0]
    row["judge_error"] = (hard or failures or [("ok", "")])[0][1][:500]
    if row["n_flagged"] > row["max_flagged"]:
        return fail(row, code, f"{row['n_flagged']} of {n_judged} {what} flagged (max {row['max_flagged']})")
    if hard:
        return fail(
            row,
            "judge_failed",
            f"the judge failed on {len(hard)} of {n_judged} {what}; first: {hard[0][0]}: {hard[0][1][:300]}",
        )
    if row["n_unjudged"] and policy == "drop":
        return fail(
            row,
            "judge_unparseable",
            f"{row['n_unjudged']} of {n_judged} {what} got no valid reply (vlm.invalid_policy: drop)",
        )
    return ok(row)


def patches_to_judge(path, image_id: str, patch: int, spec: dict):
    """(boxes, Sobel variances, chosen (index, why), their crops) of one tiled SR output."""
    from pixverve.core.views import TiledImage

    with TiledImage(path) as tiled:
        boxes = patch_boxes(tiled.height, tiled.width, patch)
        variances = sobel_variances(tiled_grey_rows(tiled), tiled.height, boxes)
        chosen = choose_patches(variances, image_id, int(spec["n_sobel"]), int(spec["n_random"]))
        return boxes, variances, chosen, [tiled.read(*boxes[index]) for index, _ in chosen]


def judge_regions_shard(verified, upscaled, config: dict, judge, prompt_path, log=print):
    """Judge the chosen patches of every image that passed checks 1-2; returns (images, patches).

    ``verified``/``upscaled``: the shard's ``verify`` and ``upscale`` tables; ``judge``: a backend from
    :func:`pixverve.models.vlm_local.build_judge` (``run_many`` + ``smoke``).
    """
    import pandas as pd
    from tqdm import tqdm

    from pixverve.core.config import side_scale
    from pixverve.core.health import gate_table
    from pixverve.core.tables import fail
    from pixverve.models.vlm import backend_name, prompt_text, user_message

    r = config["verify"]["regions"]
    patch = max(1, round(int(r["patch_px"]) * side_scale(config)))
    max_flagged = int(r["max_flagged"])
    policy = config["vlm"].get("invalid_policy", "drop")
    prompt, prompt_sha = prompt_text(prompt_path)
    sr_paths = dict(zip(upscaled["image_id"], upscaled["output_path"], strict=True)) if len(upscaled) else {}

    survivors = verified[verified["passed"]] if len(verified) else verified
    patch_rows, image_rows, failures = [], {}, {}
    recs = survivors.to_dict("records")
    bar = tqdm(total=len(recs), desc="judge regions", unit="img", mininterval=2)
    # A few images at a time: their patches are encoded for the judge together (many requests in
    # flight) without holding a whole shard's encoded patches in memory.
    for start in range(0, len(recs), IMAGES_PER_BATCH):
        requests, chunk_rows = [], []
        for rec in recs[start : start + IMAGES_PER_BATCH]:
            row = {
                "image_id": rec["image_id"],
                "root": rec["root"],
                "relpath": rec["relpath"],
                "shard": rec["shard"],
                "patch_px": patch,
                "n_patches": 0,
                "n_judged": 0,
                "n_flagged": 0,
                "n_unjudged": 0,
                "n_failed": 0,
                "judge_status": "skipped",
                "judge_error": "",
                "max_flagged": max_flagged,
                "invalid_policy": policy,
                "judge_backend": config["vlm"].get("backend", "endpoint"),
                "judge_model": judge.model_name,
                "prompt_sha": prompt_sha,
                "smoke": bool(judge.smoke),
            }
            image_rows[rec["image_id"]] = row
            try:
                boxes, variances, chosen, crops = patches_to_judge(sr_paths[rec["image_id"]], rec["image_id"], patch, r)
            except (OSError, ValueError, KeyError) as exc:
                image_rows[rec["image_id"]] = fail(row, "unreadable", f"SR output: {exc}")
                continue
            row["n_patches"] = len(boxes)
            for (index, why), crop in zip(chosen, crops, strict=True):
                x, y, w, h = boxes[index]
                request_id = f"{rec['image_id']}:{x},{y}"
                requests.append(("region_artifact", request_id, [user_message(prompt, [crop])], REGION_SCHEMA))
                chunk_rows.append(
                    {
                        "image_id": rec["image_id"],
                        "shard": rec["shard"],
                        "patch_index": index,
                        "x": x,
                        "y": y,
                        "w": w,
                        "h": h,
                        "sobel_var": round(float(variances[index]), 6),
                        "picked": why,
                    }
                )
            del crops
        for prow, res in zip(chunk_rows, judge.run_many(requests), strict=True):
            flagged = res.status == "ok" and bool(res.parsed["flagged"])
            prow.update(
                status=res.status,
                flagged=flagged,
                judge_reason=str(res.parsed.get("reason", "")) if isinstance(res.parsed, dict) else "",
                parsed=json.dumps(res.parsed, sort_keys=True) if res.parsed is not None else "",
                raw_replies=json.dumps(res.raw_replies),
                request_options=res.request_options,
                attempts=res.attempts,
                error=res.error,
                smoke=bool(judge.smoke),
                reason_detail=res.error or (str(res.parsed.get("reason", "")) if isinstance(res.parsed, dict) else ""),
                passed=res.status == "ok" and not flagged,
                reason="" if res.status == "ok" and not flagged else ("flagged" if flagged else f"judge_{res.status}"),
            )
            irow = image_rows[prow["image_id"]]
            irow["n_judged"] += 1
            irow["n_flagged"] += int(flagged)
            irow["n_unjudged"] += int(res.status != "ok")
            if res.status != "ok":
                failures.setdefault(prow["image_id"], []).append((res.status, res.error))
        patch_rows.extend(chunk_rows)
        bar.update(len(recs[start : start + IMAGES_PER_BATCH]))
    bar.close()

    images = []
    for row in image_rows.values():
        if "passed" in row:  # already decided (unreadable)
            images.append(row)
        else:
            images.append(
                judged_outcome(
                    row, row["n_judged"], "region_artifacts", "patches", policy, failures.get(row["image_id"], [])
                )
            )
        log(
            f"{row['relpath']}: {row['n_flagged']}/{row['n_judged']} flagged, {row['n_unjudged']} unjudged -> {images[-1]['reason'] or 'ok'}"
        )
    gate_table(
        pd.DataFrame(images), "verify_regions", "judge_status", "judge_error", config, "verify", backend_name(judge)
    )
    columns = [
        "image_id",
        "shard",
        "patch_index",
        "x",
        "y",
        "w",
        "h",
        "sobel_var",
        "picked",
        "status",
        "flagged",
        "judge_reason",
        "parsed",
        "raw_replies",
        "request_options",
        "attempts",
        "error",
        "smoke",
        "passed",
        "reason",
        "reason_detail",
    ]
    return pd.DataFrame(images), pd.DataFrame(patch_rows, columns=columns)
