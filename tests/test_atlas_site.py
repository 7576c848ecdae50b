"""The atlas site (pixverve/atlas/site.py + static/) on a small synthetic atlas, in headless Chromium
driven by playwright (Debian's chromium, file:// URLs): funnel counts, galleries, the deep-zoom
viewer pixel for pixel, overlay placement, bench viewer sync, inert markup, links inside the site."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixverve.atlas import site as atlas_site
from pixverve.atlas.pyramid import build_pyramid, build_thumbnail

VENDOR = atlas_site.VENDOR_DIR
XSS = "<img src=x onerror=window.__pwned=1>"
EVIL_NAME = f"{XSS}.jpg"
EVIL_CAPTION = "<script>window.__pwned=1</script> a cat"
EVIL_REPLY = '<img src=x onerror="window.__pwned=1"> looks fine'
SR_ID, EVIL_ID, BROKEN_ID = "aa11bb22cc33dd44", "ee55ff6600112233", "0123456789abcdef"
THUMB_ONLY_ID = "77889900aabbccdd"
FINAL_W, FINAL_H = 900, 700
BOX = [300, 280, 420, 360]  # an instance box, pixels of the final image
# XML namespace identifiers the pages name (never fetched): OpenSeadragon's DZI check and SVG
NAMESPACES = ("http://schemas.microsoft.com/deepzoom/2008", "http://www.w3.org/2000/svg")


def _require(what: str, present: bool) -> None:
    if present:
        return
    if os.environ.get("PIXVERVE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what} is required (PIXVERVE_REQUIRE_BROWSER=1)")
    pytest.skip(f"{what} missing")


# --- a synthetic atlas -----------------------------------------------------------------------------


def _picture(w: int, h: int, seed: int) -> np.ndarray:
    """Smooth colour fields with a few sharp shapes: structure a misplaced crop would not match."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / 37 + seed), 128 + 100 * np.cos(y / 23), 128 + 90 * np.sin((x + y) / 51)], -1)
    for _ in range(12):
        x0, y0 = rng.integers(0, w - 60), rng.integers(0, h - 60)
        img[y0 : y0 + rng.integers(20, 60), x0 : x0 + rng.integers(20, 60)] = rng.integers(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _tiles(out: Path, folder: str, name: str, array: np.ndarray) -> dict:
    src = out.parent / "inputs" / f"{folder.replace('/', '_')}_{name}.png"
    src.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(src)
    desc = build_pyramid(src, out / folder, name)
    return {
        "width": desc["width"],
        "height": desc["height"],
        "tile_size": desc["tile_size"],
        "overlap": desc["overlap"],
        "format": desc["format"],
        "url": f"{folder}/{desc['files']}",
        "src": str(src),
    }


def _stages(left_stage=None, reason=""):
    rows = []
    for stage in ("index", "screen", "verify"):
        rejected = stage == left_stage
        rows.append(
            {
                "stage": stage,
                "table": f"{stage}/s00000.parquet",
                "verdict": "rejected" if rejected else "passed",
                "reason": reason if rejected else "",
                "detail": "",
                "fields": {"megapixels": 0.63, "min_megapixels": 0.5},
            }
        )
        if rejected:
            break
    return rows


def _entry(image_id, name, status, left=None, final=None, source=None, thumb=None, **extra):
    entry = {
        "image_id": image_id,
        "name": name,
        "source": "synthetic",
        "licence": "CC0",
        "shard": "s00000",
        "smoke": True,
        "status": status,
        "left": left,
        "final": final,
        "source_image": source,
        "thumb": thumb,
        "stages": _stages(left and left["stage"], left and left["reason"]),
        "overlays": {"seams": [], "regions": [], "instances": [], "tags": []},
        "captions": None,
        "aesthetics": None,
        "pyramid_error": None,
    }
    entry.update(extra)
    return entry


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    _require(f"OpenSeadragon in {VENDOR} (make vendor)", (VENDOR / "openseadragon.min.js").exists())
    out = tmp_path_factory.mktemp("atlas") / "atlas"
    final_px = _picture(FINAL_W, FINAL_H, 1)
    final = _tiles(out, f"tiles/s00000/{SR_ID}", "final", final_px)
    source = _tiles(
        out,
        f"tiles/s00000/{SR_ID}",
        "source",
        np.asarray(Image.fromarray(final_px).resize((FINAL_W // 2, FINAL_H // 2), Image.LANCZOS)),
    )
    thumb = f"tiles/s00000/{SR_ID}/thumb.jpg"
    build_thumbnail(final["src"], out / thumb)
    evil_final = _tiles(out, f"tiles/s00000/{EVIL_ID}", "final", _picture(400, 300, 2))
    sr = _entry(
        SR_ID,
        "demo/sr_photo.jpg",
        "kept",
        final={**final, "label": "SR output (x2)"},
        source={**source, "label": "source", "scale": 2},
        thumb=thumb,
        overlays={
            "seams": [
                {"axis": "x", "pos": 450, "ratio": 1.02, "flagged": False},
                {"axis": "y", "pos": 350, "ratio": None, "flagged": True},
            ],
            "regions": [
                {
                    "x": 480,
                    "y": 240,
                    "w": 64,
                    "h": 64,
                    "picked": "top",
                    "status": "ok",
                    "flagged": False,
                    "reason": "",
                    "reply": "Sharp, no artefacts.",
                }
            ],
            "instances": [
                {
                    "box": BOX,
                    "label": "cat",
                    "description": "a grey cat",
                    "importance": 3,
                    "polygon": [[300, 280], [420, 300], [380, 360]],
                }
            ],
            "tags": ["cat", "sofa"],
        },
        captions={"long": "A grey cat on a sofa.", "short": "cat"},
        aesthetics={"score": 61.2, "analysis": {"composition": "centred"}},
    )
    evil = _entry(
        EVIL_ID,
        EVIL_NAME,
        "rejected",
        left={"stage": "screen", "reason": "too_small", "detail": XSS},
        final={**evil_final, "label": "source"},
        thumb=thumb,
        overlays={
            "seams": [],
            "regions": [
                {
                    "x": 200,
                    "y": 150,
                    "w": 50,
                    "h": 50,
                    "picked": "random",
                    "status": "ok",
                    "flagged": False,
                    "reason": XSS,
                    "reply": EVIL_REPLY,
                }
            ],
            "instances": [
                {"box": [20, 20, 80, 90], "label": XSS, "description": EVIL_CAPTION, "importance": 1, "polygon": None}
            ],
            "tags": [XSS, "plain"],
        },
        captions={"long": EVIL_CAPTION, "short": XSS},
        aesthetics={"score": 10.0, "analysis": {XSS: EVIL_CAPTION}},
    )
    broken = _entry(
        BROKEN_ID,
        "demo/broken.png",
        "rejected",
        left={"stage": "index", "reason": "unreadable", "detail": "truncated"},
        pyramid_error="cannot read broken.png",
    )
    thumb_only = _entry(  # atlas.pyramids: unrejected: a rejected image with its thumbnail only
        THUMB_ONLY_ID,
        "demo/small.jpg",
        "rejected",
        left={"stage": "verify", "reason": "seam", "detail": "ratio 1.9"},
        thumb=thumb,
        thumb_only=True,
    )
    # 230 more kept images: the kept gallery has two pages (200 + 31)
    filler = (_entry(f"f{i:015x}", f"pool/img_{i:04d}.jpg", "kept", thumb=thumb) for i in range(230))
    run = {
        "title": "Synthetic atlas",
        "smoke": True,
        "stages": ["index", "screen", "verify"],
        "funnel": [
            {"stage": "index", "entering": 233, "kept": 232, "rejected": {"unreadable": 1}},
            {"stage": "screen", "entering": 232, "kept": 231, "rejected": {"too_small": 1}},
            {"stage": "verify", "entering": 231, "kept": 231, "rejected": {}},
        ],
        "table1": [
            {
                "stage": "1 collection",
                "step": "readable",
                "entering": 233,
                "dropped": 1,
                "kept": 232,
                "sequential": True,
            },
            {"stage": "2 screening", "step": "size", "entering": 232, "dropped": 1, "kept": 231, "sequential": True},
        ],
    }

    bench_images = {}
    for k, method in enumerate(["real", "flux2_i_full", "esrgan"]):
        bench_images[method] = _tiles(out, f"tiles/bench/{method}", "cat", _picture(600, 400, 10 + k))
    bench = {
        "methods": ["flux2_i_full", "esrgan"],
        "table": [
            {"method": "flux2_i_full", "FID": 12.5, "MSFI": 7.1},
            {"method": "esrgan", "FID": 20.25, "MSFI": 5.0},
        ],
        "images": [
            {
                "stem": "cat",
                "caption": "a cat",
                "real": bench_images["real"],
                "methods": {m: bench_images[m] for m in ("flux2_i_full", "esrgan")},
                "patches": {
                    "flux2_i_full": [{"x": 0, "y": 0, "w": 128, "h": 128, "score": 7.5, "reply": EVIL_REPLY}],
                    "esrgan": [{"x": 64, "y": 64, "w": 128, "h": 128, "score": 4.0, "reply": "soft"}],
                },
            }
        ],
    }
    # one shard written apart (the cluster's way), the rest streamed through write_site
    shard_thumbs = atlas_site.write_image_data(out, [broken, thumb_only])
    written = atlas_site.write_site(
        out, run, entries=iter([sr, evil, *filler]), bench=bench, vendor_dir=VENDOR, thumbs=shard_thumbs
    )
    return {"dir": out, "run": written, "sr": sr, "evil": evil, "final_png": final["src"]}


# --- without a browser -------------------------------------------------------------------------------


def test_js_value_cannot_close_a_script():
    import pandas as pd

    text = atlas_site.js_value({"a": "</script><b>&", "n": float("nan"), "u": "\u2028é", "i": np.int64(3), "na": pd.NA})
    assert "<" not in text and ">" not in text and "&" not in text and text.isascii()
    assert json.loads(text) == {"a": "</script><b>&", "n": None, "u": "\u2028é", "i": 3, "na": None}


def test_layout_galleries_and_search(atlas):
    out, run = atlas["dir"], atlas["run"]
    for rel in (
        "index.html",
        "image.html",
        "bench.html",
        "assets/atlas.js",
        "assets/atlas.css",
        "data/run.js",
        "data/bench.js",
        "assets/openseadragon/openseadragon.min.js",
        "assets/openseadragon/LICENSE.txt",
        "assets/openseadragon/images/home_rest.png",
        f"data/images/{SR_ID[:2]}/{SR_ID}.js",
        f"data/images/{BROKEN_ID[:2]}/{BROKEN_ID}.js",
    ):
        assert (out / rel).is_file(), rel
    g = run["galleries"]
    assert g["kept"] == {"label": "kept", "count": 231, "pages": 2, "dir": "data/gallery/kept/"}
    assert g["reason:screen:too_small"]["count"] == 1 and g["stage:index"]["count"] == 1 and g["rejected"]["count"] == 3
    assert g["reason:verify:seam"]["count"] == 1  # the thumbnail-only image is in the galleries as any other
    assert len(list((out / "data/gallery/kept").glob("*.js"))) == 2 and run["search_chunks"] == 1
    rows = json.loads(re.search(r"\((\d+),(.*)\);", (out / "data/search/0.js").read_text()).group(2))
    assert [SR_ID, "demo/sr_photo.jpg", "kept", 0] in rows and [
        EVIL_ID,
        EVIL_NAME,
        "reason:screen:too_small",
        0,
    ] in rows
    assert "<" not in (out / f"data/images/{EVIL_ID[:2]}/{EVIL_ID}.js").read_text()


def test_site_links_stay_inside(atlas):
    """No http(s) address in any written file but OpenSeadragon's own code; XML namespace names excepted."""
    osd = atlas["dir"] / "assets" / "openseadragon"
    for path in atlas["dir"].rglob("*"):
        if path.is_file() and osd not in path.parents and path.suffix in (".html", ".js", ".css"):
            text = path.read_text(encoding="utf-8")
            for ns in NAMESPACES:
                text = text.replace(ns, "")
            assert not re.search(r"https?:|//[a-z]", text, re.I), path


# --- in the browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from pixverve.atlas.screenshots import chromium_path, launch

    _require("chromium", chromium_path() is not None)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    yield page
    context.close()
    assert not errors, errors
    assert all(u.startswith(("file://", "data:", "blob:")) for u in requests), [
        u for u in requests if not u.startswith("file://")
    ]


def _open(page, atlas, rel):
    page.goto(atlas["dir"].as_uri() + "/" + rel)
    page.wait_for_selector("body[data-ready]", timeout=15_000)


def test_index_funnel_table1_and_gallery(page, atlas):
    _open(page, atlas, "index.html")
    rows = page.locator("#funnel tbody tr")
    assert rows.count() == 3
    for row, stage in zip(range(3), atlas["run"]["funnel"]):
        cells = rows.nth(row).locator("th, td").all_text_contents()
        assert cells[:4] == [
            stage["stage"],
            str(stage["entering"]),
            str(stage["kept"]),
            str(sum(stage["rejected"].values())),
        ]
    assert page.locator("#table1 tbody tr").count() == 2
    assert page.locator("#table1 tbody tr").first.locator("td").all_text_contents() == [
        "1 collection",
        "readable",
        "233",
        "1",
        "232",
        "yes",
    ]
    # the kept gallery: page 1 at once, page 2 when its end scrolls into view
    page.wait_for_function("document.querySelectorAll('#gallery a.thumb').length === 200")
    page.locator("#gallery-end").scroll_into_view_if_needed()
    page.wait_for_function("document.querySelectorAll('#gallery a.thumb').length === 231")
    # a reason's gallery opens from the funnel, with its thumbnail
    page.get_by_role("link", name="too_small (1)").click()
    page.wait_for_function("document.querySelector('#gallery').dataset.gallery === 'reason:screen:too_small'")
    card = page.locator("#gallery a.thumb")
    card.first.wait_for()
    assert card.count() == 1 and card.first.get_attribute("href") == f"image.html?id={EVIL_ID}"
    page.wait_for_function(
        "document.querySelector('#gallery a.thumb img').complete && document.querySelector('#gallery a.thumb img').naturalWidth > 0"
    )
    # the same gallery by URL, and the stage filter
    _open(page, atlas, "index.html?gallery=reason:index:unreadable")
    page.wait_for_selector(f"#gallery a[data-id='{BROKEN_ID}']")
    assert page.locator("#f-stage").input_value() == "index"


def test_index_search(page, atlas):
    _open(page, atlas, "index.html")
    page.fill("#search", SR_ID[:6])
    page.wait_for_selector(f"#search-list a[data-id='{SR_ID}']")
    page.fill("#search", "img_012")
    page.wait_for_function("document.querySelectorAll('#search-list li').length === 10")


def _one_to_one(page, left: int, top: int, x0: int, y0: int):
    """Zoom the image page's viewer to 1 image px = 1 screen px with image pixel (x0, y0) at page pixel (left, top)."""
    return page.evaluate(
        """([L, T, X, Y]) => {
            const v = window.atlasViewer, t = v.world.getItemAt(0), r = v.element.getBoundingClientRect();
            v.viewport.zoomTo(t.imageToViewportZoom(1), null, true);
            const at = new OpenSeadragon.Point(L - r.left, T - r.top);
            const now = t.viewerElementToImageCoordinates(at);
            v.viewport.panBy(t.imageToViewportCoordinates(X, Y).minus(t.imageToViewportCoordinates(now.x, now.y)), true);
            v.forceRedraw();
            const p = t.viewerElementToImageCoordinates(at);
            return [p.x, p.y, t.viewportToImageZoom(v.viewport.getZoom(true))];
        }""",
        [left, top, x0, y0],
    )


def test_image_page_pyramid_matches_stored_pixels_and_overlays_placed(page, atlas, tmp_path):
    _open(page, atlas, f"image.html?id={SR_ID}")
    assert page.locator("#name").text_content() == "demo/sr_photo.jpg"
    rect = page.locator("#viewer").bounding_box()
    left, top = int(rect["x"]) + 60, int(rect["y"]) + 60
    x0, y0 = 250, 220
    ix, iy, scale = _one_to_one(page, left, top, x0, y0)
    assert abs(ix - x0) < 0.01 and abs(iy - y0) < 0.01 and abs(scale - 1) < 1e-6
    for layer in ("seams", "regions", "instances"):  # overlays off for the pixel comparison
        page.uncheck(f"input[data-layer={layer}]")
    page.wait_for_function("window.atlasViewer.world.getItemAt(0).getFullyLoaded()")
    page.wait_for_timeout(300)
    w, h = 300, 240
    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), clip={"x": left, "y": top, "width": w, "height": h})
    got = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    want = np.asarray(Image.open(atlas["final_png"]).convert("RGB"), dtype=np.int16)[y0 : y0 + h, x0 : x0 + w]
    diff = np.abs(got - want).mean()
    assert diff < 6, f"mean abs diff {diff:.2f} levels"
    shifted = np.abs(got[:, 3:] - want[:, :-3]).mean()
    assert shifted > 2 * diff  # the check can tell a 3-pixel shift

    # the instance box where the entry puts it: element box against the known 1:1 mapping and OpenSeadragon's own
    for layer in ("seams", "regions", "instances"):
        page.check(f"input[data-layer={layer}]")
    box = page.locator(".ov-instances").bounding_box()
    assert box is not None
    bx0, by0, bx1, by1 = BOX
    assert abs(box["x"] - (left + bx0 - x0)) <= 1 and abs(box["y"] - (top + by0 - y0)) <= 1
    assert abs(box["width"] - (bx1 - bx0)) <= 1 and abs(box["height"] - (by1 - by0)) <= 1
    osd = page.evaluate(
        f"(() => {{ const v = window.atlasViewer, t = v.world.getItemAt(0), r = v.element.getBoundingClientRect();"
        f" const p = t.imageToViewerElementCoordinates(new OpenSeadragon.Point({bx0}, {by0})); return [r.left + p.x, r.top + p.y]; }})()"
    )
    assert abs(box["x"] - osd[0]) <= 1 and abs(box["y"] - osd[1]) <= 1
    region = page.locator(".ov-regions").bounding_box()
    assert abs(region["x"] - (left + 480 - x0)) <= 1 and abs(region["width"] - 64) <= 1
    seam = page.locator(".ov-seams.seam-x").bounding_box()
    assert abs(seam["x"] - (left + 450 - x0)) <= 1
    page.uncheck("input[data-layer=instances]")
    assert not page.locator(".ov-instances").is_visible()
    # a region's raw reply shows on click, and the click is not OpenSeadragon's click-to-zoom
    zoom = page.evaluate("window.atlasViewer.viewport.getZoom()")
    page.locator(".ov-regions").click()
    assert page.locator("#picked-text").text_content() == "Sharp, no artefacts."
    assert page.evaluate("window.atlasViewer.viewport.getZoom()") == zoom

    # "s" toggles to the SR source at the same place and zoom
    before = page.evaluate("[window.atlasViewer.viewport.getCenter(true), window.atlasViewer.viewport.getZoom(true)]")
    page.keyboard.press("s")
    page.wait_for_function("window.atlasSource && window.atlasSource.getOpacity() === 1")
    assert page.locator("#viewer").get_attribute("data-showing") == "source"
    after = page.evaluate("[window.atlasViewer.viewport.getCenter(true), window.atlasViewer.viewport.getZoom(true)]")
    assert after == before
    same = page.evaluate(
        "(() => { const a = window.atlasViewer.world.getItemAt(0).getBounds(), b = window.atlasSource.getBounds();"
        " return [a.x, a.y, a.width, a.height].every((v, i) => Math.abs(v - [b.x, b.y, b.width, b.height][i]) < 1e-9); })()"
    )
    assert same
    # the source pixel under the final's image pixel (x0 + 40, y0 + 40) is (x0 + 40) / 2, (y0 + 40) / 2
    src_pt = page.evaluate(
        f"(() => {{ const v = window.atlasViewer, s = window.atlasSource, t = v.world.getItemAt(0);"
        f" const p = s.viewportToImageCoordinates(t.imageToViewportCoordinates({x0 + 40}, {y0 + 40})); return [p.x, p.y]; }})()"
    )
    assert abs(src_pt[0] - (x0 + 40) / 2) < 0.01 and abs(src_pt[1] - (y0 + 40) / 2) < 0.01
    page.locator("#viewer .openseadragon-canvas").first.focus()  # on the viewer, "s" is not its pan-down
    page.keyboard.press("s")
    assert page.locator("#viewer").get_attribute("data-showing") == "final"
    assert (
        page.evaluate("[window.atlasViewer.viewport.getCenter(true), window.atlasViewer.viewport.getZoom(true)]")
        == before
    )


def test_unknown_image_id(browser, atlas):
    page = browser.new_page()  # its data file is missing: the one console error here is expected
    _open(page, atlas, "image.html?id=" + "0" * 16)
    assert page.locator("#name").text_content() == "No image 0000000000000000 in this atlas"
    page.close()


def test_stages_and_left_shown(page, atlas):
    _open(page, atlas, f"image.html?id={BROKEN_ID}")
    assert page.locator("#left").text_content() == "Left at stage index: unreadable (truncated)"
    assert "cannot read broken.png" in page.locator("#pyramid-error").text_content()
    row = page.locator("#stages tbody tr.left-here")
    assert row.count() == 1 and row.locator("th").text_content() == "index"


def test_a_thumbnail_only_image_shows_its_thumbnail_and_why(page, atlas):
    _open(page, atlas, f"image.html?id={THUMB_ONLY_ID}")
    assert page.locator("#viewer").is_hidden() and page.locator("#pyramid-error").is_hidden()
    img = page.locator("#thumb-only-img")
    assert img.is_visible() and img.evaluate("i => i.complete && i.naturalWidth") > 0  # the file loaded
    assert "atlas.pyramids: unrejected" in page.locator("#thumb-only-note").text_content()
    assert page.locator("#left").text_content() == "Left at stage verify: seam (ratio 1.9)"


def test_markup_stays_inert(page, atlas):
    _open(page, atlas, "index.html?gallery=rejected")
    page.wait_for_selector(f"#gallery a[data-id='{EVIL_ID}']")
    assert page.locator(f"#gallery a[data-id='{EVIL_ID}'] .name").text_content() == EVIL_NAME
    page.fill("#search", "onerror")
    page.wait_for_selector(f"#search-list a[data-id='{EVIL_ID}']")
    assert page.locator(f"#search-list a[data-id='{EVIL_ID}']").text_content() == EVIL_NAME

    _open(page, atlas, f"image.html?id={EVIL_ID}")
    page.wait_for_function("window.atlasViewer.world.getItemAt(0).getFullyLoaded()")
    assert page.locator("#name").text_content() == EVIL_NAME
    assert page.locator("#captions dd").first.text_content() == EVIL_CAPTION
    assert page.locator("#tags li").first.text_content() == XSS
    assert XSS in page.locator("#left").text_content()
    page.locator(".ov-regions").click()
    assert page.locator("#picked-text").text_content() == EVIL_REPLY
    assert page.locator(".ov-regions").get_attribute("title") == EVIL_REPLY
    assert page.locator("#aesthetics dt").first.text_content() == XSS
    # nothing from the data became an element: no <img> outside the viewer's own, no <script> but ours
    assert page.evaluate("document.querySelectorAll('img[src=x], #captions script, #tags img, header img').length") == 0

    _open(page, atlas, "bench.html")
    page.wait_for_selector(".bench-panel[data-method=flux2_i_full] .ov-regions")
    assert page.locator(".bench-panel[data-method=flux2_i_full] .ov-regions").get_attribute("title") == EVIL_REPLY
    for url in ("index.html?gallery=rejected", f"image.html?id={EVIL_ID}", "bench.html"):
        _open(page, atlas, url)
        page.wait_for_timeout(200)
        assert page.evaluate("typeof window.__pwned") == "undefined", url
        hrefs = page.evaluate(
            "[...document.querySelectorAll('[href],[src]')].map(e => e.getAttribute('href') || e.getAttribute('src'))"
        )
        assert hrefs and all(not re.match(r"^([a-z]+:|//|/)", h, re.I) for h in hrefs), hrefs


def test_bench_viewers_follow(page, atlas):
    _open(page, atlas, "bench.html")
    page.wait_for_function("document.querySelectorAll('.bench-panel .viewer[data-open]').length === 3")
    assert page.locator("#bench-table tbody tr").count() == 2
    assert page.locator("#bench-table tbody tr").first.locator("td").all_text_contents() == [
        "flux2_i_full",
        "12.5",
        "7.1",
    ]
    assert page.locator(".bench-panel[data-method=esrgan] .ov-regions .label").text_content() == "score 4"
    state = "window.atlasViewers.map(v => [v.viewport.getZoom(true), v.viewport.getCenter(true).x, v.viewport.getCenter(true).y])"

    def same(states):
        return all(np.allclose(s, states[0], rtol=1e-6, atol=1e-9) for s in states[1:])

    # a mouse wheel over the second viewer: the others follow it, frame by frame, to the end
    panel = page.locator("#bench-viewer-1").bounding_box()
    page.mouse.move(panel["x"] + panel["width"] * 0.3, panel["y"] + panel["height"] * 0.4)
    page.mouse.wheel(0, -400)
    page.wait_for_timeout(1500)
    states = page.evaluate(state)
    assert states[1][0] > 1.1 and same(states), states
    # and a programmatic zoom and pan of the first
    page.evaluate(
        "window.atlasLead(0); const v = window.atlasViewers[0]; v.viewport.zoomTo(3, null, true); v.viewport.panTo(new OpenSeadragon.Point(0.3, 0.2), true);"
    )
    page.wait_for_timeout(300)
    states = page.evaluate(state)
    assert abs(states[0][0] - 3) < 1e-6 and same(states), states


def test_screenshot_helper(atlas, browser, tmp_path):
    from pixverve.atlas.screenshots import take

    shots = take(atlas["dir"], tmp_path, image_id=SR_ID, width=480, browser=browser)
    assert [p.name for p in shots] == ["index.png", "image.png", "bench.png"]
    for p in shots:
        with Image.open(p) as im:
            assert im.width == 480 and 20_000 < p.stat().st_size < 600_000
