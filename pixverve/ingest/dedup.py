"""Deduplication across all sources: exact (content hash) and near-duplicate (perceptual hash).

Perceptual hash: the 64-bit DCT hash (pHash) -- grey (BT.601), squashed to 32x32 by area
averaging, 2-D DCT-II, the 8x8 lowest frequencies, each bit = coefficient > their median.
Row-major, first coefficient in the most significant bit.  Re-encoding, resizing and mild
colour changes move it by a few bits; different photographs differ by ~32.

Near-duplicate search is *not* all-pairs.  It uses multi-index hashing (Norouzi et al., 2012):
cut the 64 bits into m blocks; two hashes within Hamming distance k must agree to within
floor(k/m) bits on at least one block (pigeonhole).  For each block we sort the block values
once and look up every hash's block value XOR each flip mask of <= floor(k/m) bits with a
binary search, then verify the full distance of the few candidates found.  m is chosen per run
to minimise (lookups + expected candidates) for the pool size.  Groups are the connected
components of the "within k" graph; each keeps its best member by resolution.
"""

from __future__ import annotations

from itertools import combinations
from math import comb

import numpy as np
import pandas as pd

PHASH_SIZE = 32
PHASH_LOW = 8
# Blocks up to this many bits are looked up in a dense table (2^24 x 8 bytes = 128 MB at most)
# instead of by binary search: one gather per probe instead of two log(n) searches.
DIRECT_TABLE_BITS = 24


def phash(grey: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a 2-D uint8 grey image (any size)."""
    import cv2
    from scipy.fft import dct

    small = cv2.resize(grey, (PHASH_SIZE, PHASH_SIZE), interpolation=cv2.INTER_AREA).astype(np.float64)
    coeffs = dct(dct(small, axis=0, type=2), axis=1, type=2)[:PHASH_LOW, :PHASH_LOW]
    bits = (coeffs > np.median(coeffs)).ravel()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64))).astype(np.int64)


def block_layout(max_distance: int, n: int) -> tuple[list[int], int]:
    """(bits per block, search radius per block) minimising lookups + expected candidates."""
    best = None
    for m in range(1, min(64, max_distance + 1) + 1):
        bits = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
        radius = max_distance // m
        probes = [sum(comb(b, j) for j in range(radius + 1)) for b in bits]
        lookups = n * sum(probes)
        candidates = n * n * sum(p / 2.0**b for p, b in zip(probes, bits))
        cost = lookups + candidates
        if best is None or cost < best[0]:
            best = (cost, bits, radius)
    return best[1], best[2]


def _flip_masks(bits: int, radius: int) -> np.ndarray:
    masks = [0]
    for r in range(1, radius + 1):
        for pos in combinations(range(bits), r):
            masks.append(sum(1 << p for p in pos))
    return np.asarray(masks, dtype=np.uint64)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 1 << 20):
    """All pairs (i < j) with Hamming distance <= max_distance, as three int64 arrays (i, j, d)."""
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    found_i, found_j = [], []
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    bits, radius = block_layout(max_distance, n)
    shift = 0
    for b in bits:
        block = (h >> np.uint64(shift)) & np.uint64((1 << b) - 1)
        shift += b
        order = np.argsort(block, kind="stable")
        if b <= DIRECT_TABLE_BITS:
            # direct addressing: where each block value's run starts in `order`, and its length
            table_count = np.bincount(block.astype(np.int64), minlength=1 << b).astype(np.int32)
            table_start = (np.cumsum(table_count, dtype=np.int64) - table_count).astype(np.int32)
        else:
            sorted_block = block[order]
        for mask in _flip_masks(b, radius):
            keys = block ^ mask
            if b <= DIRECT_TABLE_BITS:
                k64 = keys.astype(np.int64)
                lo = table_start[k64]
                counts = table_count[k64]
            else:
                lo = np.searchsorted(sorted_block, keys, side="left")
                counts = np.searchsorted(sorted_block, keys, side="right") - lo
            queries = np.nonzero(counts)[0]
            if len(queries) == 0:
                continue
            # expand each query's [lo, hi) range into explicit pairs, in bounded chunks
            for start in range(0, len(queries), chunk):
                q = queries[start : start + chunk]
                c = counts[q]
                qi = np.repeat(q, c)
                offsets = np.arange(len(qi)) - np.repeat(np.cumsum(c) - c, c)
                tj = order[np.repeat(lo[q], c) + offsets]
                keep = qi < tj
                qi, tj = qi[keep], tj[keep]
                close = hamming(h[qi], h[tj]) <= max_distance
                found_i.append(qi[close])
                found_j.append(tj[close])
    if not found_i:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    codes = np.unique(np.concatenate(found_i).astype(np.int64) * n + np.concatenate(found_j))
    i, j = codes // n, codes % n
    return i, j, hamming(h[i], h[j])


def brute_force_pairs(hashes: np.ndarray, max_distance: int):
    """Reference all-pairs search, for tests and the benchmark only."""
    h = np.asarray(hashes, dtype=np.uint64)
    out_i, out_j = [], []
    for i in range(len(h) - 1):
        d = hamming(h[i + 1 :], np.full(len(h) - i - 1, h[i], dtype=np.uint64))
        js = np.nonzero(d <= max_distance)[0] + i + 1
        out_i.extend([i] * len(js))
        out_j.extend(js.tolist())
    i, j = np.asarray(out_i, dtype=np.int64), np.asarray(out_j, dtype=np.int64)
    return i, j, hamming(h[i], h[j]) if len(i) else np.zeros(0, dtype=np.int64)


def deduplicate(screened: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Decide, for every image that passed screening, whether it is kept or a duplicate.

    ``screened`` needs: image_id, root, relpath, shard, width, height, bytes, phash.
    Exact duplicates (same image_id) keep the first by (root, relpath).  Near-duplicate groups
    keep the member with the most pixels, then the most bytes (less compressed), then the
    smallest image_id, so the choice does not depend on input order.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    needed = ["image_id", "root", "relpath", "shard", "width", "height", "bytes", "phash"]
    if screened.empty:  # no image read at all (zero shards): an empty table with its columns
        screened = screened.reindex(columns=list(dict.fromkeys([*screened.columns, *needed]))).astype(
            {c: ("int64" if c in ("width", "height", "bytes") else "object") for c in needed}
        )
    df = screened.sort_values(["image_id", "root", "relpath"], kind="mergesort").reset_index(drop=True)
    out = df[needed].copy()
    out["passed"] = True
    out["reason"] = ""
    out["reason_detail"] = ""
    out["dup_group"] = out["image_id"]
    out["duplicate_of"] = ""
    out["hamming_to_kept"] = 0
    out["group_size"] = 1
    out["max_hamming"] = int(max_distance)

    # exact duplicates: byte-identical files share an image_id; the first by (root, relpath) stays
    first = ~out.duplicated("image_id", keep="first")
    out["exact_copies"] = out.groupby("image_id")["image_id"].transform("size").astype(np.int64)
    kept_path = (out["root"] + "/" + out["relpath"])[first]
    kept_path.index = out.loc[first, "image_id"]
    copies = ~first
    if copies.any():
        out.loc[copies, "passed"] = False
        out.loc[copies, "reason"] = "exact_duplicate"
        out.loc[copies, "duplicate_of"] = out.loc[copies, "image_id"]
        detail = "byte-identical to " + out.loc[copies, "image_id"].map(kept_path).astype(str) + " (kept)"
        out.loc[copies, "reason_detail"] = detail

    # near duplicates among the distinct images
    uniq = out[first]
    hashes = np.array([int(x, 16) for x in uniq["phash"]], dtype=np.uint64)
    i, j, _ = near_duplicate_pairs(hashes, max_distance)
    if len(i) == 0:
        return out
    n = len(uniq)
    _, labels = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n)), directed=False)
    rank = pd.DataFrame(
        {
            "label": labels,
            "neg_pixels": -(uniq["width"].to_numpy(np.int64) * uniq["height"].to_numpy(np.int64)),
            "neg_bytes": -uniq["bytes"].to_numpy(np.int64),
            "image_id": uniq["image_id"].to_numpy(),
        }
    ).sort_values(["label", "neg_pixels", "neg_bytes", "image_id"], kind="mergesort")
    keeper_of_label = rank.groupby("label")["image_id"].first()
    size_of_label = rank.groupby("label").size()
    info = pd.DataFrame({"image_id": uniq["image_id"].to_numpy(), "label": labels, "hash": hashes})
    info["group_size"] = size_of_label.loc[labels].to_numpy()
    info = info[info["group_size"] > 1]
    info["keeper"] = keeper_of_label.loc[info["label"]].to_numpy()
    hash_of = pd.Series(hashes, index=uniq["image_id"].to_numpy())
    info["distance"] = hamming(info["hash"].to_numpy(), hash_of.loc[info["keeper"]].to_numpy())
    info = info.set_index("image_id")

    in_group = out["image_id"].isin(info.index)
    ids = out.loc[in_group, "image_id"]
    out.loc[in_group, "dup_group"] = ids.map(info["keeper"])
    out.loc[in_group, "group_size"] = ids.map(info["group_size"]).astype(np.int64)
    dropped = in_group & (out["dup_group"] != out["image_id"]) & first
    ids = out.loc[dropped, "image_id"]
    keepers = ids.map(info["keeper"])
    size_txt = out.loc[dropped, "width"].astype(str) + "x" + out.loc[dropped, "height"].astype(str)
    kept_size = out[first].set_index("image_id")
    kept_txt = keepers.map(kept_size["width"].astype(str) + "x" + kept_size["height"].astype(str))
    out.loc[dropped, "passed"] = False
    out.loc[dropped, "reason"] = "near_duplicate"
    out.loc[dropped, "duplicate_of"] = keepers
    out.loc[dropped, "hamming_to_kept"] = ids.map(info["distance"]).astype(np.int64)
    out.loc[dropped, "reason_detail"] = (
        "pHash within "
        + str(max_distance)
        + " bits of a group of "
        + ids.map(info["group_size"]).astype(str)
        + "; kept "
        + keepers
        + " ("
        + kept_txt
        + ") over this "
        + size_txt
        + " (distance to kept "
        + out.loc[dropped, "hamming_to_kept"].astype(str)
        + ")"
    )
    return out


def kept_in_shard(shard: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """The rows of one shard's index manifest that deduplication kept (the input of stage 2)."""
    kept = decisions[decisions["passed"].astype(bool) & decisions["image_id"].isin(shard["image_id"])]
    return shard.merge(kept[["image_id", "root", "relpath"]], on=["image_id", "root", "relpath"])
