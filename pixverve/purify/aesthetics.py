"""Stage 2, aesthetics: every configured predictor's score for the images of one shard.

The predictors themselves (LAION's CLIP + MLP, ArtiMuse through the VLM client) are shared with
stage 5 and live in ``pixverve.models.aesthetics``; this is the shard loop of rule purify_aesthetics.
"""

from __future__ import annotations

from pixverve.core.health import check_step_health
from pixverve.core.tables import MODEL_ERROR, MODEL_ERRORS, model_error_text
from pixverve.models.aesthetics import DECODE_MIN_SIDE, build_predictor

SCORE_CHUNK = 64  # images decoded and scored together


def score_aesthetics_shard(rows, config: dict, base_dir=".", threads: int = 1, predictors=None):
    """Every configured predictor's score for the images of one shard (reduced decodes)."""
    import pandas as pd
    import torch
    from tqdm import tqdm

    from pixverve.core import images
    from pixverve.core.paths import image_path, roots_from_config

    torch.set_num_threads(max(1, threads))
    specs = config["purify"]["aesthetics"]["predictors"]
    if predictors is None:
        predictors = {name: build_predictor(name, spec) for name, spec in specs.items()}
    predictors = {k: v for k, v in predictors.items() if v is not None}
    roots = roots_from_config(config, base_dir)
    cap = config["io"]["max_megapixels"]
    background = tuple(config["io"]["alpha_background"])
    out = []
    recs = rows.to_dict("records")
    bar = tqdm(total=len(recs), desc="aesthetics", unit="img", mininterval=2)
    # Images go to the predictors in chunks: LAION batches them on the device, ArtiMuse sends
    # them to its server concurrently.  Reduced decodes (>= 448 px) keep a chunk small.
    for start in range(0, len(recs), SCORE_CHUNK):
        chunk_rows, chunk_images = [], []
        for rec in recs[start : start + SCORE_CHUNK]:
            row = {"image_id": rec["image_id"], "root": rec["root"], "relpath": rec["relpath"], "shard": rec["shard"]}
            try:
                rgb, _ = images.read_rgb(
                    image_path(roots, rec["root"], rec["relpath"]),
                    cap,
                    reduce_to_min_side=DECODE_MIN_SIDE,
                    background=background,
                )
                row.update(passed=True, reason="", reason_detail="")
                chunk_images.append(rgb)
            except images.ImageError as exc:
                row.update(passed=False, reason=exc.code, reason_detail=exc.detail)
            chunk_rows.append(row)
        decoded = [row for row in chunk_rows if row["passed"]]
        for name, pred in predictors.items():
            for row, (score, status, extra) in zip(decoded, _scores_with_status(pred, chunk_images), strict=True):
                row[f"{name}_score"] = round(float(score), 6)  # byte-stable tables across threads/machines
                row[f"{name}_status"] = status
                row.update({f"{name}_{key}": value for key, value in extra.items()})
                row.setdefault(f"{name}_error", "")
            for row in chunk_rows:
                row.setdefault(f"{name}_score", float("nan"))
                row.setdefault(f"{name}_status", "unreadable")
                row.setdefault(f"{name}_error", row["reason_detail"])
                row[f"{name}_smoke"] = pred.info.smoke
                row[f"{name}_backend"] = pred.info.backend
                row[f"{name}_weights"] = pred.info.weights
        out.extend(chunk_rows)
        bar.update(len(chunk_rows))
    bar.close()
    table = pd.DataFrame(out)
    fraction = float(config["purify"].get("max_failed_fraction", 0.05))
    for name, pred in predictors.items():
        decoded = table[table["passed"]] if len(table) else table
        if len(decoded):
            check_step_health(
                f"purify_aesthetics/{name}",
                decoded[f"{name}_status"],
                decoded[f"{name}_error"],
                fraction,
                who=pred.info.weights,
                config_key="purify.max_failed_fraction",
            )
    return table


def _scores_with_status(pred, rgb_images: list) -> list[tuple[float, str, dict]]:
    """(score, status, details) per image.  A local model that raises on the batch is run image
    by image, so one image it cannot take is that image's failure, not the shard's."""
    if not rgb_images:
        return []
    try:
        scores = pred.score(rgb_images)
    except MODEL_ERRORS:
        if len(rgb_images) == 1:
            raise
        return [one for im in rgb_images for one in _one_score(pred, im)]
    statuses = getattr(pred, "statuses", None) or ["ok" if score == score else "not_scored" for score in scores]
    details = getattr(pred, "details", None) or [{}] * len(rgb_images)
    return list(zip(scores, statuses, details, strict=True))


def _one_score(pred, rgb) -> list[tuple[float, str, dict]]:
    try:
        return _scores_with_status(pred, [rgb])
    except MODEL_ERRORS as exc:
        return [(float("nan"), MODEL_ERROR, {"error": model_error_text(pred.info.name, exc)})]
