"""Fig. 5 (rule dataset_samples): which images, which region at 100 %, the source beside it, plain text."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pixverve.core.figures import (
    FIG5_METADATA_COLUMNS,
    FIG5_PATCH_COLUMNS,
    fig5_order,
    fig5_panels,
    fig5_samples,
    zoom_box,
)
from pixverve.core.tiling import TiledTiffWriter, bands_of


def _image(tmp_path, image_id: str, scale: int, caption: str, smoke: bool = False) -> dict:
    rng = np.random.default_rng(int(image_id[:4], 16))
    src = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    (tmp_path / "src").mkdir(exist_ok=True)
    Image.fromarray(src).save(tmp_path / "src" / f"{image_id}.png")
    sr = np.repeat(np.repeat(src, scale, axis=0), scale, axis=1)  # nearest x scale: the source is recoverable
    out = tmp_path / f"{image_id}.tif"
    TiledTiffWriter(out, *sr.shape[:2], tile=16).write(bands_of(sr, rows=20))
    return {
        "image_id": image_id,
        "split": "train",
        "prov_sr_output": str(out),
        "prov_sr_scale": scale,
        "prov_sr_backend": "realesrgan" if scale > 1 else "none",
        "prov_root": "r",
        "prov_relpath": f"{image_id}.png",
        "short_caption": caption,
        "smoke": smoke,
    }


def _patches(rows):
    return pd.DataFrame(rows, columns=FIG5_PATCH_COLUMNS)  # only what the rule reads


def test_the_zoom_region_is_the_most_detailed_judged_patch_else_the_centre():
    patches = _patches(
        [
            ("a", 0, 0, 0, 32, 32, 5.0),
            ("a", 3, 64, 32, 32, 32, 9.0),
            ("a", 1, 32, 0, 32, 32, 9.0),
            ("b", 0, 0, 0, 8, 8, 99),
        ]
    )
    assert zoom_box(patches, "a", 224, 160, 32) == (32, 0, 32, 32)  # a tie: the lower patch index
    assert zoom_box(patches, "c", 224, 160, 32) == (96, 64, 32, 32)  # never judged: centred
    assert zoom_box(_patches([]), "c", 20, 160, 32) == (0, 64, 20, 32)  # narrower than a patch
    big = _patches([("a", 0, 768, 1536, 768, 768, 1.0)])  # a 100 MP patch: its centre 512 px
    assert zoom_box(big, "a", 10000, 10000, 768) == (768 + 128, 1536 + 128, 512, 512)


def test_a_512_px_zoom_gets_a_figure_pixel_per_image_pixel(tmp_path):
    rec = _image(tmp_path, "ab12" * 4, 4, "x")
    rec["prov_sr_scale"] = 1  # treat the 224x160 output as native: no source panel needed
    rec.update(prov_sr_output=str(tmp_path / "big.tif"))
    big = np.random.default_rng(0).integers(0, 256, (600, 640, 3), dtype=np.uint8)
    TiledTiffWriter(tmp_path / "big.tif", 600, 640, tile=64).write(bands_of(big))
    png = tmp_path / "f.png"
    fig5_samples(pd.DataFrame([rec]), _patches([]), None, 1, 0, 10, 700, png, tmp_path / "f.pdf")
    dpi = Image.open(png).info["dpi"][0]
    # three panels in 15 inches: ~4.2 in each, so 512 px need more than the base 110 dpi
    assert 512 / 4.5 < dpi < 512 / 3.5 and abs(Image.open(png).size[0] - 15 * dpi) < 2


def test_panels_show_the_stored_pixels_and_the_source_at_the_same_place(tmp_path):
    rec = _image(tmp_path, "ab12" * 4, 4, "x")
    patches = _patches([(rec["image_id"], 0, 22, 37, 30, 26, 1.0)])  # not aligned to the scale
    p = fig5_panels(rec, patches, lambda root, rel: tmp_path / "src" / rel, 10, 32)
    src = np.asarray(Image.open(tmp_path / "src" / rec["prov_relpath"]))
    sr = np.repeat(np.repeat(src, 4, axis=0), 4, axis=1)
    assert p["box"] == (22, 37, 30, 26) and p["size"] == (224, 160) and p["scale"] == 4
    assert np.array_equal(p["crop"], sr[37:63, 22:52])
    assert np.array_equal(p["source_crop"], sr[37:63, 22:52])  # nearest x4 of the source, same region
    assert max(p["overview"].shape[:2]) == 224  # under the overview size: every pixel
    native = _image(tmp_path, "cd34" * 4, 1, "y")
    assert fig5_panels(native, patches, lambda *_: None, 10, 32)["source_crop"] is None


def test_figure_draws_the_seeded_samples_with_captions_as_plain_text(tmp_path):
    recs = [
        _image(tmp_path, "ab12" * 4, 4, "a $\\frac{$ sign <b>bold</b>"),
        _image(tmp_path, "cd34" * 4, 1, "a native image", smoke=True),
        _image(tmp_path, "ef56" * 4, 2, "third"),
        {**_image(tmp_path, "0077" * 4, 2, ""), "split": "uncaptioned"},
    ]
    meta = pd.DataFrame(recs)[FIG5_METADATA_COLUMNS]  # only what the rule reads
    png, pdf = tmp_path / "fig5.png", tmp_path / "fig5.pdf"
    drawn = fig5_samples(meta, _patches([]), lambda root, rel: tmp_path / "src" / rel, 2, 0, 10, 32, png, pdf)
    assert drawn == fig5_order(["ab12" * 4, "cd34" * 4, "ef56" * 4], 0)[:2]  # the uncaptioned one never
    assert Image.open(png).size[0] > 1000 and pdf.stat().st_size > 0
    all_drawn = fig5_samples(meta, _patches([]), lambda root, rel: tmp_path / "src" / rel, 9, 0, 10, 32, png, pdf)
    assert sorted(all_drawn) == sorted(["ab12" * 4, "cd34" * 4, "ef56" * 4])  # mathtext would fail on the caption
    assert fig5_samples(meta.iloc[:0], _patches([]), lambda *_: None, 4, 0, 10, 32, png, pdf) == []


def test_a_smoke_sample_titles_the_figure_smoke(tmp_path, monkeypatch):
    import matplotlib.figure

    titles = []
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(
        matplotlib.figure.Figure, "suptitle", lambda self, t, **kw: titles.append(t) or real(self, t, **kw)
    )
    meta = pd.DataFrame([_image(tmp_path, "cd34" * 4, 1, "a", smoke=True)])
    fig5_samples(meta, _patches([]), lambda *_: None, 1, 0, 10, 32, tmp_path / "a.png", tmp_path / "a.pdf")
    assert len(titles) == 1 and titles[0].startswith("SMOKE OUTPUT")
    meta["smoke"] = False
    fig5_samples(meta, _patches([]), lambda *_: None, 1, 0, 10, 32, tmp_path / "a.png", tmp_path / "a.pdf")
    assert len(titles) == 1


@pytest.mark.parametrize("seed", [0, 3])
def test_sample_order_is_stable_when_images_are_added(seed):
    ids = [f"{i:016x}" for i in range(50)]
    first = fig5_order(ids, seed)[:4]
    more = fig5_order(ids + [f"{i:016x}" for i in range(1000, 1100)], seed)
    assert [i for i in more if i in set(ids)][:4] == first


def test_a_tall_zoom_sets_the_resolution_by_its_height(tmp_path):
    """A 300 x 512 zoom (an image narrower than a patch): its box is limited by the row's height,
    so the figure needs ~130 dpi, not the ~220 its narrow width alone would ask for."""
    rec = _image(tmp_path, "ab12" * 4, 1, "x")
    tall = np.random.default_rng(0).integers(0, 256, (1000, 300, 3), dtype=np.uint8)
    TiledTiffWriter(tmp_path / "tall.tif", 1000, 300, tile=64).write(bands_of(tall))
    rec["prov_sr_output"] = str(tmp_path / "tall.tif")
    png = tmp_path / "f.png"
    fig5_samples(pd.DataFrame([rec]), _patches([]), None, 1, 0, 10, 700, png, tmp_path / "f.pdf")
    assert 512 / 4.6 < Image.open(png).info["dpi"][0] < 160


def test_the_source_panel_composites_alpha_as_sr_read_it(tmp_path):
    rec = _image(tmp_path, "ab12" * 4, 4, "x")
    rgba = np.zeros((40, 56, 4), np.uint8)  # fully transparent
    Image.fromarray(rgba).save(tmp_path / "src" / rec["prov_relpath"])
    p = fig5_panels(rec, _patches([]), lambda root, rel: tmp_path / "src" / rel, 10, 32, background=(0, 128, 255))
    assert (p["source_crop"].reshape(-1, 3) == (0, 128, 255)).all()
