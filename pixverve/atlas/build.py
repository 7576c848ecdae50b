"""The atlas of a run, shard by shard (CPU jobs on the cluster), then its index.

``build_shard``: every image of one shard -- its entry (``entries.entry``), its pyramids (the
image shown and, after SR, its source) and thumbnail -- and the shard's summary for the index.
An image that cannot be tiled is recorded with its reason (``pyramid_error``); the shard goes on.
"""

from __future__ import annotations

from pathlib import Path

from pixverve.atlas import entries, records
from pixverve.atlas.pyramid import (
    PyramidError,
    build_pyramid,
    build_thumbnail,
    remove_pyramid,
    thumbnail_from_pyramid,
)

TILE_SIZE = 510  # atlas.tile_size: a quarter of the files of 254 px tiles, as fast to view (NOTES.md, "Measured")

UNSHARDED = "unsharded"  # images the index rejected have no shard


def shard_folder(shard: str) -> str:
    return shard or UNSHARDED


def _source_path(image: dict, roots) -> Path | None:
    from pixverve.core.paths import image_path

    idx = image["index"] or {}
    try:
        return image_path(roots, idx["root"], idx["relpath"])
    except (KeyError, ValueError, OSError):
        return None  # a root no longer configured, or a path outside it: shown without pixels


PYRAMIDS = ("all", "unrejected")  # atlas.pyramids: which images get deep-zoom pyramids (the rest a thumbnail)


def tile_image(
    entry: dict, site_dir: Path, max_megapixels: float | None, tile_size: int = TILE_SIZE, pyramids: str = "all"
) -> dict:
    """Replace the entry's image paths by tile sources (URLs relative to the site) and add its
    thumbnail; an image libvips cannot tile keeps no pixels and says why.  With ``pyramids:
    unrejected`` a rejected image gets its thumbnail only (``thumb_only``): at paper scale the
    pyramids of the rejected images are most of the atlas's terabytes."""
    rel = Path("tiles") / shard_folder(entry["shard"]) / entry["image_id"]
    folder = Path(site_dir) / rel
    if entry["final"] is None:
        entry["pyramid_error"] = "no image file to show: its root is not configured, or the path leaves it"
        return entry
    shown_path = entry["final"]["path"]
    if pyramids == "unrejected" and entry["status"] == "rejected":
        for name in ("final", "source"):  # an earlier `all` build's pyramids: the disk this option saves
            remove_pyramid(folder, name)
        try:
            build_thumbnail(shown_path, folder / "thumb.jpg", max_megapixels)
            entry["thumb"] = f"{rel.as_posix()}/thumb.jpg"
        except PyramidError as exc:
            entry["pyramid_error"] = str(exc)
        entry["final"] = entry["source_image"] = None
        entry["thumb_only"] = True
        return entry
    try:
        for key, name in (("final", "final"), ("source_image", "source")):
            shown = entry[key]
            if shown is None:
                continue
            tiles = build_pyramid(shown["path"], folder, name, max_megapixels, tile_size=tile_size)
            if key == "final" and thumbnail_from_pyramid(folder, tiles, folder / "thumb.jpg") is None:
                build_thumbnail(shown_path, folder / "thumb.jpg", max_megapixels)  # tiles under 256 px
            url = f"{rel.as_posix()}/{tiles.pop('files')}"
            entry[key] = {k: v for k, v in shown.items() if k != "path"} | tiles | {"url": url}
        entry["thumb"] = f"{rel.as_posix()}/thumb.jpg"
    except PyramidError as exc:
        entry["pyramid_error"] = str(exc)
        for key in ("final", "source_image"):
            if entry[key] is not None and "path" in entry[key]:
                entry[key] = None
    return entry


def build_shard(results, shard: str, config: dict, site_dir, log=print) -> tuple[list[dict], list[dict]]:
    """(entries, thumb summaries) of every image of ``shard``, pyramids written under ``site_dir``."""
    from tqdm import tqdm

    from pixverve.core.paths import roots_from_config

    pyramids = (config.get("atlas") or {}).get("pyramids", "all")
    if pyramids not in PYRAMIDS:
        raise ValueError(f"config key atlas.pyramids: {pyramids!r} is not one of {list(PYRAMIDS)}")
    roots = roots_from_config(config)
    images = records.read_shard(results, shard)
    cap = (config.get("io") or {}).get("max_megapixels")
    tile_size = int((config.get("atlas") or {}).get("tile_size", TILE_SIZE))
    out, thumbs = [], []
    for image in tqdm(images.values(), desc=f"atlas {shard_folder(shard)}", unit="img"):
        entry = tile_image(entries.entry(image, _source_path(image, roots)), site_dir, cap, tile_size, pyramids)
        if entry["pyramid_error"]:
            log(f"{entry['name']}: {entry['pyramid_error']}")
        out.append(entry)
        thumbs.append(
            {
                "image_id": entry["image_id"],
                "name": entry["name"],
                "thumb": entry["thumb"],
                "status": entry["status"],
                "shard": entry["shard"],
            }
            | records.summary(image)
        )
    return out, thumbs
