"""The demo's own atlas (`make demo` = `snakemake all atlas`), built from the real stage tables by
rules atlas_shard / atlas_bench / atlas_site, in headless Chromium: its funnel is Table 1's, a
reason's gallery opens, an SR image's page shows its stored pixels at 1:1 with every seam of the
verify table and every instance of the record where they belong, a rejected image says where it
left, the bench page has a viewer per method.  (The synthetic atlas of tests/test_atlas_site.py
covers the rest: search, source toggle, bench sync, inert markup.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from test_atlas_site import _one_to_one, browser, page  # noqa: F401 (fixtures)

from pixverve.atlas import records

pytestmark = pytest.mark.e2e


def _call_args(text: str):
    """The arguments a data file passes to its callback: ATLAS.<name>(<json>, ...)."""
    body = text[text.index("(") + 1 : text.rindex(")")]
    return json.loads(f"[{body}]")


@pytest.fixture(scope="module")
def demo_atlas(demo_run):
    site = demo_run / "results" / "atlas"
    assert (site / "index.html").exists()
    (run,) = _call_args((site / "data" / "run.js").read_text(encoding="utf-8"))
    return {"dir": site, "run": run, "work": demo_run}


def _open(page, site, rel):  # noqa: F811
    page.goto(site["dir"].as_uri() + "/" + rel)
    page.wait_for_selector("body[data-ready]", timeout=20_000)


def test_funnel_is_table_1(demo_atlas):
    run = demo_atlas["run"]
    table1 = pd.read_csv(demo_atlas["work"] / "paper_figures" / "table1_data_flow.csv").to_dict("records")
    assert [r["stage"] for r in run["funnel"]] == ["index", "screen", "dedup", "purify", "upscale", "verify", "caption"]
    assert records.funnel_mismatch(run["funnel"], table1) == []
    by = {r["stage"]: r for r in run["funnel"]}
    assert by["index"]["entering"] == 22 and by["dedup"]["rejected"] == {"exact_duplicate": 1, "near_duplicate": 1}
    rejected = pd.read_csv(demo_atlas["work"] / "paper_figures" / "rejections_by_reason.csv")
    for row in rejected.to_dict("records"):  # every reason of the run's rejections, counted alike
        stage = row["stage"].split(" ", 1)[1].replace("purification", "purify")
        assert by[stage]["rejected"].get(row["reason"]) == row["images"], row


def test_index_lists_stages_and_a_reason_gallery_opens(page, demo_atlas):  # noqa: F811
    _open(page, demo_atlas, "index.html")
    rows = page.locator("#funnel tbody tr")
    for i, stage in enumerate(demo_atlas["run"]["funnel"]):
        cells = rows.nth(i).locator("th, td").all_text_contents()
        assert cells[:3] == [stage["stage"], str(stage["entering"]), str(stage["kept"])]
    page.get_by_role("link", name="near_duplicate (1)").click()
    page.wait_for_function("document.querySelector('#gallery').dataset.gallery === 'reason:dedup:near_duplicate'")
    card = page.locator("#gallery a.thumb")
    card.first.wait_for()
    assert card.count() == 1
    page.wait_for_function("document.querySelector('#gallery a.thumb img').naturalWidth > 0")


def _sr_image(work):
    verify = pd.concat(pd.read_parquet(p) for p in sorted((work / "results/verify").glob("s*.parquet")))
    row = verify[verify["passed"] & (verify["n_seams"] > 0)].iloc[0]
    up = pd.concat(pd.read_parquet(p) for p in sorted((work / "results/upscale").glob("s*.parquet")))
    return row, up.set_index("image_id").loc[row["image_id"]]


def test_sr_image_page_pixels_seams_and_instances(page, demo_atlas, tmp_path):  # noqa: F811
    row, up = _sr_image(demo_atlas["work"])
    _open(page, demo_atlas, f"image.html?id={row['image_id']}")
    assert page.locator("#name").text_content() == f"{row['root']}/{row['relpath']}"
    # every seam the verify table measured is drawn, the flagged ones marked
    assert page.locator(".ov-seams").count() == int(row["n_seams"]) == len(json.loads(row["seams"]))
    stored = tifffile.imread(demo_atlas["work"] / up["output_path"])
    rect = page.locator("#viewer").bounding_box()
    left, top = int(rect["x"]) + 40, int(rect["y"]) + 40
    w, h = min(200, stored.shape[1] - 20), min(160, stored.shape[0] - 20)
    x0, y0 = 10, 10
    ix, iy, scale = _one_to_one(page, left, top, x0, y0)
    assert abs(ix - x0) < 0.01 and abs(iy - y0) < 0.01 and abs(scale - 1) < 1e-6
    for layer in ("seams", "regions", "instances"):
        page.uncheck(f"input[data-layer={layer}]")
    page.wait_for_function("window.atlasViewer.world.getItemAt(0).getFullyLoaded()")
    page.wait_for_timeout(300)
    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), clip={"x": left, "y": top, "width": w, "height": h})
    got = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    diff = np.abs(got - stored[y0 : y0 + h, x0 : x0 + w].astype(np.int16)).mean()
    assert diff < 6, f"mean abs diff {diff:.2f} levels against the stored SR output"
    # the instances of the annotation record, each box where the record puts it
    record = next(
        json.loads(line)
        for p in sorted((demo_atlas["work"] / "results/caption/records").glob("*.jsonl"))
        for line in p.read_text().splitlines()
        if json.loads(line)["image_id"] == row["image_id"]
    )
    page.check("input[data-layer=instances]")
    boxes = page.locator(".ov-instances")
    assert boxes.count() == len(record["instances"]) > 0
    bx0, by0 = record["instances"][0]["box"][:2]
    first = boxes.first.bounding_box()
    assert abs(first["x"] - (left + bx0 - x0)) <= 1.5 and abs(first["y"] - (top + by0 - y0)) <= 1.5


def test_rejected_image_says_where_it_left(page, demo_atlas):  # noqa: F811
    dedup = pd.read_parquet(demo_atlas["work"] / "results/dedup/decisions.parquet")
    near = dedup[dedup["reason"] == "near_duplicate"].iloc[0]
    _open(page, demo_atlas, f"image.html?id={near['image_id']}")
    text = page.locator("body").inner_text()
    assert re.search(r"dedup", text) and "near_duplicate" in text


def test_bench_page_has_a_viewer_per_method(page, demo_atlas):  # noqa: F811
    (bench,) = _call_args((demo_atlas["dir"] / "data" / "bench.js").read_text(encoding="utf-8"))
    import yaml

    enabled = yaml.safe_load((demo_atlas["work"] / "tests/e2e/config.yaml").read_text())["bench"]["enabled"]
    assert bench["methods"] == enabled and bench["images"]
    _open(page, demo_atlas, "bench.html")
    # the real image and each method's, for the first benchmark image
    assert page.locator("#bench-viewers .viewer").count() >= 1 + len(bench["methods"])
