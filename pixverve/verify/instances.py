"""Stage 4, check 4: instance-level artefacts, judged on stage 5's instance crops.

The paper: the instance crops from stage 5 are judged by the same VLM as the region check; the
image is dropped if any is flagged.  The crop is the one stage 5 describes (centred on the
instance, 5 % padding), at ``verify.instances.crop_px`` on its long side.  A reply that stays
unparseable follows ``vlm.invalid_policy`` (drop rejects the image; keep passes it with the
count recorded); a judge that failed (HTTP error, timeout, empty or refusal-like answer) rejects
it whatever the policy.  An image without instances has nothing to judge and passes (recorded);
one whose tagger, detector or segmenter failed has unknown instances and is rejected
(``model_failed``), never passed as "0 instances".
"""

from __future__ import annotations

import json


def judge_instances_shard(masks, config: dict, views_dir, upscaled, judge, prompt_path, log=print):
    """(images, instances) tables for one shard."""
    import pandas as pd
    from tqdm import tqdm

    from pixverve.core.health import MODEL_FAILED, gate_table, rejects
    from pixverve.core.tables import chunks, fail, id_columns
    from pixverve.core.views import TiledImage, instance_crop, kept_instances, read_view, view_file
    from pixverve.models.vlm import backend_name, prompt_text, user_message
    from pixverve.verify.regions import REGION_SCHEMA, judged_outcome

    spec = config["verify"]["instances"]
    pad = float(config["caption"]["instances"]["padding"])
    max_flagged = int(spec["max_flagged"])
    policy = config["vlm"].get("invalid_policy", "drop")
    prompt, sha = prompt_text(prompt_path)
    out_paths = dict(zip(upscaled["image_id"], upscaled["output_path"], strict=True)) if len(upscaled) else {}
    images, inst_rows, failures = {}, [], {}
    recs = masks.to_dict("records")
    for chunk in tqdm(list(chunks(recs, 4)), desc="judge instances", unit="batch", mininterval=2):
        requests, meta = [], []
        for rec in chunk:
            images[rec["image_id"]] = id_columns(rec) | {
                "n_instances": 0,
                "n_flagged": 0,
                "n_unjudged": 0,
                "n_failed": 0,
                "judge_status": "skipped",
                "judge_error": "",
                "max_flagged": max_flagged,
                "invalid_policy": policy,
                "judge_model": judge.model_name,
                "prompt_sha": sha,
                "smoke": bool(judge.smoke),
            }
            if not view_file(views_dir, rec["image_id"]).exists():  # caption_tags could not read it
                images[rec["image_id"]]["unreadable"] = True
                continue
            if rejects(rec.get("status", "ok"), policy):  # a stage-5 model failed on it: its instances are unknown,
                # not zero (a tagger or detector that failed found nothing because it did not look)
                images[rec["image_id"]]["model_error"] = f"{rec['status']}: {rec.get('error', '')}"
                continue
            instances = kept_instances(rec)
            if not instances:
                continue
            view = read_view(views_dir, rec["image_id"])
            with TiledImage(out_paths[rec["image_id"]]) as tiled:
                for inst in instances:
                    crop, region = instance_crop(tiled, view, inst["box"], pad, int(spec["crop_px"]))
                    requests.append(
                        (
                            "instance_artifact",
                            f"{rec['image_id']}:{inst['instance']}",
                            [user_message(prompt, [crop])],
                            REGION_SCHEMA,
                        )
                    )
                    meta.append(
                        {
                            "image_id": rec["image_id"],
                            "shard": rec["shard"],
                            "instance": inst["instance"],
                            "label": inst["label"],
                            "crop_x": region[0],
                            "crop_y": region[1],
                            "crop_w": region[2],
                            "crop_h": region[3],
                        }
                    )
        for m, res in zip(meta, judge.run_many(requests) if requests else [], strict=True):
            flagged = res.status == "ok" and bool(res.parsed["flagged"])
            inst_rows.append(
                m
                | {
                    "status": res.status,
                    "flagged": flagged,
                    "judge_reason": str(res.parsed.get("reason", "")) if isinstance(res.parsed, dict) else "",
                    "replies": json.dumps(res.raw_replies),
                    "request_options": res.request_options,
                    "error": res.error,
                    "attempts": res.attempts,
                    "smoke": bool(judge.smoke),
                }
            )
            row = images[m["image_id"]]
            row["n_instances"] += 1
            row["n_flagged"] += int(flagged)
            row["n_unjudged"] += int(res.status != "ok")
            if res.status != "ok":
                failures.setdefault(m["image_id"], []).append((res.status, res.error))
    out = []
    for row in images.values():
        error = row.pop("model_error", None)
        if row.pop("unreadable", False):
            out.append(
                fail(row, "unreadable", "the SR output could not be read for its analysis copy (see caption_tags)")
            )
        elif error is not None:
            out.append(
                fail(
                    row,
                    MODEL_FAILED,
                    f"an earlier stage-5 step failed on the image, its instances are unknown: {error[:400]}",
                )
            )
        else:
            out.append(
                judged_outcome(
                    row,
                    row["n_instances"],
                    "instance_artifacts",
                    "instance crops",
                    policy,
                    failures.get(row["image_id"], []),
                )
            )
        log(
            f"{row['relpath']}: {row['n_flagged']}/{row['n_instances']} instance crops flagged, {row['n_unjudged']} unjudged -> {out[-1]['reason'] or 'ok'}"
        )
    gate_table(
        pd.DataFrame(out), "verify_instances", "judge_status", "judge_error", config, "verify", backend_name(judge)
    )
    columns = [
        "image_id",
        "shard",
        "instance",
        "label",
        "crop_x",
        "crop_y",
        "crop_w",
        "crop_h",
        "status",
        "flagged",
        "judge_reason",
        "replies",
        "request_options",
        "error",
        "attempts",
        "smoke",
    ]
    image_columns = [
        "image_id",
        "passed",
        "reason",
        "reason_detail",
        "root",
        "relpath",
        "shard",
        "n_instances",
        "n_flagged",
        "n_unjudged",
        "n_failed",
        "judge_status",
        "judge_error",
        "max_flagged",
        "invalid_policy",
        "judge_model",
        "prompt_sha",
        "smoke",
    ]
    return pd.DataFrame(out, columns=image_columns), pd.DataFrame(inst_rows, columns=columns)
