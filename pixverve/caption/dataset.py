"""Stage 5 output: the annotation record per image, the dataset export, and the dataset's tables.

* ``build_records``: one record per image that passed every stage-4 check, validated against
  ``schemas/annotation.schema.json`` when written (a record that does not validate stops the job:
  it is a bug, not an image to skip).
* ``export_dataset``: ``metadata.parquet`` (one row per record), a JSONL in the layout of the
  paper's benchmark file (``file_name``, ``short_caption``, ``long_caption``) for training, and the
  held-out benchmark split (``caption.export.benchmark_size`` images chosen by a seeded hash of the
  image id, so the split does not change when other images are added).
* ``data_flow``/``dataset_comparison``/``pixel_buckets``/``source_mix``: the paper's Tables 1-2
  and two summaries, written as CSV, Markdown and LaTeX by ``write_formats``.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pixverve.caption.steps import AESTHETIC_DIMENSIONS

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "annotation.schema.json"
VISUAL_SCORES = {  # record key -> (table, column): the stage 2 and stage 4 numbers of each image
    "exposure_share": ("purify", "exposure_share"),
    "laplacian_var": ("purify", "laplacian_var"),
    "flat_share": ("purify", "flat_share"),
    "entropy_bits": ("purify", "entropy_bits"),
    "laion_score": ("purify", "laion_score"),
    "artimuse_score": ("purify", "artimuse_score"),
    "max_seam_ratio": ("verify", "max_seam_ratio"),
    "psnr": ("verify", "psnr"),
    "ssim": ("verify", "ssim"),
    "lpips": ("verify", "lpips"),
}
# Table 2 of the paper (project page): name, average size, images, average caption words.
PUBLISHED_DATASETS = [
    ("PixArt-30k", 2531, 2656, 30000, 71.3),
    ("Aesthetic-Train", 4578, 4838, 12015, 24.2),
    ("Aesthetic-Train-V2", 4861, 5127, 105288, 38.1),
    ("UltraHR-100K", 3654, 5143, 100486, 109.2),
    ("PixVerve-95K (paper)", 13031, 15348, 95735, 234.1),
]


def load_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def _num(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    return float(v)


def _by_id(table) -> dict:
    return {r["image_id"]: r for r in table.to_dict("records")} if len(table) else {}


# Stage 5's model steps, in the chain's order: name -> what the step status is read from.
CAPTION_STEPS = ["tags", "prune", "boxes", "masks", "descriptions", "aesthetics", "long_caption", "short_caption"]


def step_statuses(t: dict, b: dict, m: dict, descriptions: list[dict], a: dict | None, c: dict | None) -> dict:
    """{step: (status, error)} of one image's stage-5 steps.  A step without a status column or a
    row for the image did not run for it (``missing``): never read as a pass.  Descriptions: one
    ok row per kept instance, else the first failure (or ``missing`` for an undescribed one)."""
    missing = ("missing", "no row for the image")

    def of(row, status, error):
        return (row.get(status, "missing"), row.get(error, "")) if row is not None else missing

    kept = sum(1 for x in json.loads(m.get("instances") or "[]") if x.get("kept"))
    bad = [d for d in descriptions if d.get("status") != "ok"]
    if bad:
        described = (bad[0]["status"], f"{len(bad)} of {kept} instances: {bad[0].get('error', '')}")
    elif len(descriptions) < kept:
        described = ("missing", f"{kept - len(descriptions)} of {kept} kept instances have no description row")
    else:
        described = ("ok", "") if kept else ("no_instances", "")
    return {
        "tags": of(t, "tags_status", "tags_error"),
        "prune": of(t, "prune_status", "prune_error"),
        "boxes": of(b, "status", "error"),
        "masks": of(m, "status", "error"),
        "descriptions": described,
        "aesthetics": of(a, "judge_status", "judge_error"),
        "long_caption": of(c, "long_status", "long_error"),
        "short_caption": of(c, "short_status", "short_error"),
    }


def build_records(inputs: dict, required=None, invalid_policy: str = "drop") -> tuple[list[dict], pd.DataFrame]:
    """(annotation records, rejected) of one shard.  ``inputs``: DataFrames keyed tags, boxes,
    masks, instance_checks, descriptions, aesthetics, captions, index, purify, verify, upscale.

    Only an image whose ``required`` stage-5 steps (default: all, the paper) are ok -- or off /
    legitimately empty -- becomes a record; the others are rows of ``rejected`` (reason
    ``model_failed``, the failed steps and their errors in ``reason_detail``)."""
    import jsonschema

    from pixverve.core.health import MODEL_FAILED, rejects

    schema = load_schema()
    tags, masks = _by_id(inputs["tags"]), _by_id(inputs["masks"])
    boxes, aesthetics, captions = _by_id(inputs["boxes"]), _by_id(inputs["aesthetics"]), _by_id(inputs["captions"])
    index, purify, verify, upscale = (_by_id(inputs[k]) for k in ("index", "purify", "verify", "upscale"))
    desc: dict[tuple, dict] = {}
    smoke_desc: set[str] = set()  # images whose descriptions a tiny model wrote
    for r in inputs["descriptions"].to_dict("records") if len(inputs["descriptions"]) else []:
        desc[(r["image_id"], int(r["instance"]))] = r
        if r.get("smoke"):
            smoke_desc.add(r["image_id"])
    desc_by_image: dict[str, list[dict]] = {}
    for (iid, _), r in desc.items():
        desc_by_image.setdefault(iid, []).append(r)
    required = set(CAPTION_STEPS if required in (None, "all") else required)
    checks = inputs["instance_checks"]
    records, rejected = [], []
    for check in checks[checks["passed"]].to_dict("records") if len(checks) else []:
        iid = check["image_id"]
        t, m, b, a, c = tags[iid], masks[iid], boxes[iid], aesthetics.get(iid), captions.get(iid)
        steps = step_statuses(t, b, m, desc_by_image.get(iid, []), a, c)
        failed = [
            f"{name}: {status}: {str(error)[:300]}"
            for name, (status, error) in steps.items()
            if name in required and rejects(status, invalid_policy)
        ]
        if failed:  # a check that did not run is not passed: the image leaves, counted, with why
            rejected.append(
                {
                    "image_id": iid,
                    "passed": False,
                    "reason": MODEL_FAILED,
                    "reason_detail": "; ".join(failed),
                    "root": check["root"],
                    "relpath": check["relpath"],
                    "shard": check["shard"],
                    "failed_steps": ",".join(f.split(":")[0] for f in failed),
                    "steps": json.dumps({k: v[0] for k, v in steps.items()}, sort_keys=True),
                }
            )
            continue
        src, up = index.get(iid, {}), upscale[iid]
        tables = {"purify": purify.get(iid, {}), "verify": verify.get(iid, {})}
        instances = []
        mask_grid = [int(t["view_height"]), int(t["view_width"])]
        for inst in json.loads(m["instances"]):
            if not inst["kept"]:
                continue
            d = desc.get((iid, inst["instance"]), {})
            importance = d.get("importance")
            instances.append(
                {
                    "instance": inst["instance"],
                    "label": inst["label"],
                    "box": inst["box"],
                    "score": inst["score"],
                    "area_fraction": inst["area_fraction"],
                    "mask": inst["mask"],
                    "description": d.get("description"),
                    "importance": None if importance is None or importance is pd.NA else int(importance),
                    "description_status": d.get("status", "missing"),
                }
            )
        analysis = json.loads(a["analysis"]) if a is not None and a["analysis"] else None
        smoke_steps = [
            name
            for name, row in (
                ("tags", t),
                ("boxes", b),
                ("masks", m),
                ("instance_check", check),
                ("aesthetics", a),
                ("captions", c),
            )
            if row is not None and bool(row.get("smoke"))
        ]
        if iid in smoke_desc:
            smoke_steps.append("descriptions")
        record = {
            "image_id": iid,
            "file_name": Path(up["output_path"]).name,
            "width": int(t["width"]),
            "height": int(t["height"]),
            "provenance": {
                "root": check["root"],
                "relpath": check["relpath"],
                "source": src.get("source", ""),
                "licence": src.get("licence", ""),
                "url": src.get("url", ""),
                "author": src.get("author", ""),
                "sr_backend": up["backend"],
                "sr_scale": int(up["scale"]),
                "sr_weights": up.get("weights") or "",
                "sr_output": up["output_path"],
            },
            "scores": {k: _num(tables[table].get(col)) for k, (table, col) in VISUAL_SCORES.items()},
            "tags": json.loads(t["tags"]),
            "tags_unpruned": [x[0] if isinstance(x, list) else x for x in json.loads(t["tags_raw"])],
            "mask_grid": mask_grid,
            "instances": instances,
            "aesthetics": analysis,
            "long_caption": c["long_caption"] if steps["long_caption"][0] == "ok" else None,
            "short_caption": c["short_caption"] if steps["short_caption"][0] == "ok" else None,
            "models": {
                "tagger": t["tagger_model"],
                "tag_pruner": t.get("prune_model", ""),
                "detector": b["detector"],
                "segmenter": m["segmenter"],
                "instance_judge": check["judge_model"],
                "captioner": c["model"] if c is not None else "",
            },
            "prompts": {
                k: v
                for k, v in {
                    "tags": t.get("tags_prompt_sha", ""),
                    "prune": t.get("prune_prompt_sha", ""),
                    "instance_artifact": check["prompt_sha"],
                    "aesthetics": a["prompt_sha"] if a is not None else "",
                    "long_caption": c["long_prompt_sha"] if c is not None else "",
                    "short_caption": c["short_prompt_sha"] if c is not None else "",
                }.items()
                if v
            },
            "smoke": bool(smoke_steps),
            "smoke_steps": smoke_steps,
            # every model step's status: the stage 2-4 gates it passed, then stage 5's own
            "steps": {
                **{
                    f"purify_{k.removesuffix('_status')}": str(v)
                    for k, v in tables["purify"].items()
                    if k.endswith("_status")
                },
                "sr": "ok",
                "regions": "ok",
                "instance_check": "ok",
                **{name: status for name, (status, _) in steps.items()},
            },
        }
        jsonschema.validate(record, schema)
        records.append(record)
    columns = ["image_id", "passed", "reason", "reason_detail", "root", "relpath", "shard", "failed_steps", "steps"]
    return records, pd.DataFrame(rejected, columns=columns)


def write_jsonl(records: list[dict], path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in sorted(records, key=lambda r: r["image_id"]):
            fh.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(path)


def read_jsonl(paths) -> list[dict]:
    out = []
    for p in paths:
        with open(p, encoding="utf-8") as fh:
            out.extend(json.loads(line) for line in fh if line.strip())
    return out


def benchmark_split(image_ids: list[str], size: int, seed: int) -> set[str]:
    """The held-out ids: the ``size`` smallest sha256(seed:image_id) -- stable under additions."""
    ranked = sorted(image_ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    return set(ranked[:size])


def export_dataset(records: list[dict], size: int, seed: int):
    """(metadata DataFrame, train rows, benchmark rows).  Only records with both captions can be
    exported as caption pairs; the others stay in the metadata with split ``uncaptioned``."""
    captioned = [r["image_id"] for r in records if r["long_caption"] and r["short_caption"]]
    held_out = benchmark_split(captioned, size, seed)
    rows, train, bench = [], [], []
    for r in sorted(records, key=lambda r: r["image_id"]):
        split = (
            "uncaptioned"
            if r["image_id"] not in set(captioned)
            else ("benchmark" if r["image_id"] in held_out else "train")
        )
        row = {
            "image_id": r["image_id"],
            "file_name": r["file_name"],
            "split": split,
            "width": r["width"],
            "height": r["height"],
            "megapixels": round(r["width"] * r["height"] / 1e6, 3),
            **{f"prov_{k}": v for k, v in r["provenance"].items()},
            **r["scores"],
            "tags": json.dumps(r["tags"]),
            "n_tags": len(r["tags"]),
            "n_instances": len(r["instances"]),
            "n_described": sum(1 for i in r["instances"] if i["description"]),
            "long_caption": r["long_caption"],
            "short_caption": r["short_caption"],
            "long_words": len(r["long_caption"].split()) if r["long_caption"] else 0,
            "short_words": len(r["short_caption"].split()) if r["short_caption"] else 0,
            "has_aesthetics": r["aesthetics"] is not None,
            "smoke": r["smoke"],
            "smoke_steps": ",".join(r["smoke_steps"]),
        }
        for key, _ in AESTHETIC_DIMENSIONS:
            row[f"aes_{key}"] = r["aesthetics"][key]["score"] if r["aesthetics"] else None
        rows.append(row)
        pair = {"file_name": r["file_name"], "short_caption": r["short_caption"], "long_caption": r["long_caption"]}
        if split == "train":
            train.append(pair)
        elif split == "benchmark":
            bench.append(pair)
    return pd.DataFrame(rows), train, bench


# ----------------------------------------------------------------------------- tables


def data_flow(
    ingest: pd.DataFrame,
    purify: pd.DataFrame,
    upscale: pd.DataFrame,
    verify_counts: pd.DataFrame,
    instance_checks: pd.DataFrame,
    records: list[dict],
    rejected: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Table 1: images entering and kept at every step, in the pipeline's order.

    Stage 2's five filters are applied to the same pool (the candidates are their intersection),
    so their rows all enter with the pool and may overlap; the ``candidates`` row is the step.
    Images a required model step failed on are rows of their own (``model steps ok``): a check
    that did not run is counted as what it is, not as a filter's verdict."""
    rejected = rejected if rejected is not None else pd.DataFrame(columns=["image_id"])
    rows = []
    for r in ingest.to_dict("records"):
        rows.append(("1 collection", r["stage"], int(r["entered"]), int(r["passed"]), True))
    pool = len(purify)
    for name in ("exposure", "sharpness", "flatness", "entropy", "aesthetics"):
        failed = int((~purify[f"{name}_ok"].astype(bool)).sum()) if f"{name}_ok" in purify else 0
        rows.append(("2 purification", f"filter: {name}", pool, pool - failed, False))
    model_failed = int((purify["reason"] == "model_failed").sum()) if "reason" in purify else 0
    rows.append(("2 purification", "model steps ok (aesthetic predictors)", pool, pool - model_failed, False))
    rows.append(("2 purification", "candidates (all five)", pool, int(purify["passed"].sum()), True))
    sr_ok = int(upscale["passed"].sum()) if len(upscale) else 0
    rows.append(("3 super-resolution", "SR output written", len(upscale), sr_ok, True))
    for r in verify_counts.to_dict("records"):
        if r["check"] == "sr_output":
            continue
        rows.append(("4 verification", r["check"], int(r["entering"]), int(r["kept"]), True))
    n_inst = len(instance_checks)
    rows.append(("4 verification", "instances", n_inst, int(instance_checks["passed"].sum()) if n_inst else 0, True))
    captioned = sum(1 for r in records if r["long_caption"] and r["short_caption"])
    rows.append(("5 captioning", "model steps ok (required steps)", len(records) + len(rejected), len(records), True))
    rows.append(("5 captioning", "annotation record", len(records), len(records), True))
    rows.append(("5 captioning", "long + short caption", len(records), captioned, True))
    df = pd.DataFrame(rows, columns=["stage", "step", "entering", "kept", "sequential"])
    df["dropped"] = df["entering"] - df["kept"]
    return df[["stage", "step", "entering", "dropped", "kept", "sequential"]]


def rejections_by_reason(stages: list[tuple[str, pd.DataFrame]], ingest: pd.DataFrame | None = None) -> pd.DataFrame:
    """The whole run's rejections, one row per stage and reason (a model step that failed is
    ``model_failed`` or the judge's own code: ``judge_failed``, ``judge_unparseable``), with the
    failed step where the table says it (``failed_steps``).  ``ingest``: stage 1's summary
    (``results/summary/ingest.csv``, its ``reasons`` column "reason: n; ...")."""
    rows = []
    for r in ingest.to_dict("records") if ingest is not None else []:
        for part in str(r.get("reasons") or "").split(";"):
            reason, _, n = part.strip().rpartition(":")
            if reason and n.strip().isdigit():
                rows.append(
                    {"stage": f"1 {r['stage']}", "reason": reason.strip(), "failed_steps": "", "images": int(n)}
                )
    for stage, df in stages:
        if not len(df) or "passed" not in df:
            continue
        out = df.loc[~df["passed"].astype(bool)]
        steps = out["failed_steps"] if "failed_steps" in out else pd.Series([""] * len(out), index=out.index)
        for (reason, step), n in (
            pd.DataFrame({"reason": out["reason"].fillna(""), "step": steps.fillna("")}).value_counts().items()
        ):
            rows.append({"stage": stage, "reason": reason or "(none)", "failed_steps": step, "images": int(n)})
    return pd.DataFrame(rows, columns=["stage", "reason", "failed_steps", "images"])


def plot_funnel(flow: pd.DataFrame, rejections: pd.DataFrame, smoke: bool, path) -> None:
    """Left: images kept after each sequential step of Table 1; right: every rejection of the run
    by stage and reason, model failures in their own colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    note = "  [SMOKE: tiny models, not a result]" if smoke else ""
    seq = flow[flow["sequential"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, max(3.6, 0.32 * max(len(seq), len(rejections)) + 1.2)))
    labels = [f"{st.split(' ', 1)[0]}. {step}" for st, step in zip(seq["stage"], seq["step"], strict=True)]
    ax1.barh(labels[::-1], seq["kept"].to_numpy()[::-1], color="tab:blue")
    ax1.set(title=f"images kept after each step{note}", xlabel="images")
    if len(rejections):
        names = [
            f"{s}: {r}" + (f" ({f})" if f else "")
            for s, r, f in zip(rejections["stage"], rejections["reason"], rejections["failed_steps"], strict=True)
        ]
        model = rejections["reason"].isin(["model_failed", "judge_failed", "judge_unparseable"]) | rejections[
            "reason"
        ].str.startswith("sr_")
        ax2.barh(
            names[::-1],
            rejections["images"].to_numpy()[::-1],
            color=["tab:red" if m else "tab:grey" for m in model[::-1]],
        )
    ax2.set(title="rejections by stage and reason\n(red: a model step failed)", xlabel="images")
    ax2.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_data_flow(flow: pd.DataFrame) -> None:
    """Each sequential step enters with what the previous sequential step kept; raises if not."""
    seq = flow[flow["sequential"]].to_dict("records")
    for prev, cur in zip(seq, seq[1:]):
        if cur["entering"] != prev["kept"]:
            raise ValueError(
                f"data flow does not add up: {prev['step']} kept {prev['kept']} but {cur['step']} entered {cur['entering']}"
            )


def dataset_comparison(meta: pd.DataFrame, smoke: bool) -> pd.DataFrame:
    rows = [
        {
            "dataset": n,
            "avg_width": w,
            "avg_height": h,
            "images": c,
            "avg_caption_words": words,
            "annotations": "captions"
            if n != "PixVerve-95K (paper)"
            else "tags, boxes, masks, instances, aesthetics, long + short captions",
        }
        for n, w, h, c, words in PUBLISHED_DATASETS
    ]
    if len(meta):
        have = [
            ("tags", meta["n_tags"].gt(0).any()),
            ("boxes/masks", meta["n_instances"].gt(0).any()),
            ("instance descriptions", meta["n_described"].gt(0).any()),
            ("aesthetics", meta["has_aesthetics"].any()),
            ("long + short captions", meta["long_words"].gt(0).any()),
        ]
        rows.append(
            {
                "dataset": "PixVerve (this run" + (", SMOKE: tiny models" if smoke else "") + ")",
                "avg_width": round(float(meta["width"].mean())),
                "avg_height": round(float(meta["height"].mean())),
                "images": len(meta),
                "avg_caption_words": round(float(meta.loc[meta["long_words"] > 0, "long_words"].mean()), 1)
                if meta["long_words"].gt(0).any()
                else 0.0,
                "annotations": ", ".join(name for name, present in have if present) or "none",
            }
        )
    return pd.DataFrame(rows)


def pixel_buckets(meta: pd.DataFrame, edges_mp: list[float]) -> pd.DataFrame:
    """Images per pixel-count bucket [edge_i, edge_i+1) in megapixels (last bucket open-ended)."""
    mp = meta["megapixels"].to_numpy() if len(meta) else np.zeros(0)
    rows = []
    for i, lo in enumerate(edges_mp):
        hi = edges_mp[i + 1] if i + 1 < len(edges_mp) else math.inf
        n = int(((mp >= lo) & (mp < hi)).sum())
        label = f"{lo:g}-{hi:g} MP" if hi != math.inf else f">= {lo:g} MP"
        rows.append({"bucket": label, "images": n, "share": round(n / len(mp), 4) if len(mp) else 0.0})
    return pd.DataFrame(rows)


def source_mix(meta: pd.DataFrame) -> pd.DataFrame:
    if not len(meta):
        return pd.DataFrame(columns=["source", "licence", "images", "share"])
    g = meta.groupby(["prov_source", "prov_licence"]).size().reset_index(name="images")
    g["share"] = (g["images"] / len(meta)).round(4)
    return g.rename(columns={"prov_source": "source", "prov_licence": "licence"}).sort_values(
        ["images", "source"], ascending=[False, True]
    )


def _markdown(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [
        ["" if v is None else str(v) for v in row] for row in df.itertuples(index=False)
    ]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells[1:]]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("$", r"\$"),
        ("#", r"\#"),
        ("_", r"\_"),
        ("{", r"\{"),
        ("}", r"\}"),
        ("~", r"\textasciitilde{}"),
        ("^", r"\textasciicircum{}"),
    ):
        text = text.replace(a, b) if a != "\\" else text.replace(a, "\0")
    return text.replace("\0", r"\textbackslash{}")


def _latex(df: pd.DataFrame, caption: str) -> str:
    spec = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    head = " & ".join(_latex_escape(str(c)) for c in df.columns) + r" \\"
    body = [
        " & ".join(_latex_escape("" if v is None else str(v)) for v in row) + r" \\"
        for row in df.itertuples(index=False)
    ]
    return (
        "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                rf"\caption{{{_latex_escape(caption)}}}",
                rf"\begin{{tabular}}{{{spec}}}",
                r"\toprule",
                head,
                r"\midrule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                r"\end{table}",
            ]
        )
        + "\n"
    )


def write_formats(df: pd.DataFrame, stem, caption: str) -> list[Path]:
    """``stem``.csv / .md / .tex; the caption (with SMOKE when it applies) heads the Markdown."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(f"**{caption}**\n\n" + _markdown(df))
    stem.with_suffix(".tex").write_text(_latex(df, caption))
    return [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]


def plot_distributions(meta: pd.DataFrame, smoke: bool, caption_png, instances_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    note = "  [SMOKE: tiny models, not a result]" if smoke else ""
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, col, title in ((ax[0], "long_words", "long caption"), (ax[1], "short_words", "short caption")):
        data = meta.loc[meta[col] > 0, col] if len(meta) else []
        if len(data):
            sns.histplot(data, ax=axis, bins=min(30, max(5, len(data))))
            axis.axvline(float(np.mean(data)), color="k", ls="--", lw=1, label=f"mean {np.mean(data):.1f}")
            axis.legend()
        axis.set(title=f"{title} length (words){note}", xlabel="words", ylabel="images")
    fig.tight_layout()
    fig.savefig(caption_png, dpi=120)
    plt.close(fig)
    fig, axis = plt.subplots(figsize=(5.5, 3.6))
    if len(meta):
        sns.histplot(meta["n_instances"], ax=axis, discrete=True)
        axis.axvline(
            float(meta["n_instances"].mean()), color="k", ls="--", lw=1, label=f"mean {meta['n_instances'].mean():.1f}"
        )
        axis.legend()
    axis.set(title=f"instances per image{note}", xlabel="instances (after mask NMS)", ylabel="images")
    fig.tight_layout()
    fig.savefig(instances_png, dpi=120)
    plt.close(fig)
