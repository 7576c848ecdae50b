"""Small PNGs of an atlas (index, one image page, the bench page) for the README and docs/atlas.md,
taken in the headless Chromium the tests use (playwright driving the system's chromium, no browser download).

    python -m pixverve.atlas.screenshots results/atlas docs/atlas [--image IMAGE_ID]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

VIEWPORT = {"width": 1280, "height": 860}
WIDTH = 760  # pixels of the saved PNGs
# every <img> on screen decoded and every viewer's tiles at the current zoom loaded
SETTLED = """() => [...document.images].filter((i) => i.getBoundingClientRect().top < innerHeight).every((i) => i.complete) &&
  [window.atlasViewer, ...(window.atlasViewers || [])].filter(Boolean)
    .flatMap((v) => (v.navigator ? [v, v.navigator] : [v]))
    .every((v) => v.world.getItemCount() > 0 && v.world.getItemAt(0).getFullyLoaded())"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def launch(playwright):
    path = chromium_path()
    if path is None:
        raise FileNotFoundError("no chromium on PATH (Debian/Ubuntu: apt-get install chromium)")
    return playwright.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])


def _first_image_id(site: Path, scan: int = 500) -> str | None:
    """The first image with a pyramid (a kept one first) among the first ``scan`` data files."""
    import json

    found = sorted((site / "data" / "images").glob("*/*.js"))[:scan]
    with_final = []
    for path in found:
        text = path.read_text(encoding="ascii")
        entry = json.loads(text[text.index("(") + 1 : text.rindex(")")])
        if entry.get("final"):
            with_final.append((entry.get("status") != "kept", entry["image_id"]))
    return min(with_final)[1] if with_final else None


def _shrink(path: Path, width: int) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        image.save(path, optimize=True)


def take(site, out_dir, image_id: str | None = None, width: int = WIDTH, browser=None) -> list[Path]:
    """Save index.png, image.png and (when the site has a bench) bench.png under ``out_dir``
    (``browser``: a playwright Browser to use, else one is launched)."""
    from playwright.sync_api import sync_playwright

    site, out_dir = Path(site).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image_id = image_id or _first_image_id(site)
    pages = [("index", "index.html")]
    if image_id:
        pages.append(("image", f"image.html?id={image_id}"))
    if (site / "data" / "bench.js").exists():
        pages.append(("bench", "bench.html"))
    if browser is not None:
        return _shoot(browser, site, out_dir, pages, width)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            return _shoot(browser, site, out_dir, pages, width)
        finally:
            browser.close()


def _shoot(browser, site: Path, out_dir: Path, pages, width: int) -> list[Path]:
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    page = context.new_page()
    written = []
    for name, rel in pages:
        page.goto(site.as_uri() + "/" + rel)
        page.wait_for_selector("body[data-ready]", timeout=15_000)
        page.wait_for_function(SETTLED, timeout=15_000)
        page.wait_for_timeout(600)  # tiles fade in
        dest = out_dir / f"{name}.png"
        page.screenshot(path=str(dest))
        _shrink(dest, width)
        written.append(dest)
    context.close()
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", help="the atlas folder (results/atlas)")
    parser.add_argument("out", help="where the PNGs go")
    parser.add_argument("--image", help="image id of the image page (default: the first)")
    parser.add_argument("--width", type=int, default=WIDTH)
    args = parser.parse_args(argv)
    for path in take(args.site, args.out, args.image, args.width):
        print(path)


if __name__ == "__main__":
    main()
