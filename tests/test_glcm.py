"""PixVerve-Bench GLCM score: the fast kernel equals the published per-patch scikit-image procedure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pixverve.bench.glcm import glcm_score, offsets, patch_entropies, reference_patch_entropies


def _photo_grey() -> np.ndarray:
    from skimage import data

    return np.asarray(data.astronaut()[..., 1])  # a real photograph's channel, 512x512


@pytest.mark.parametrize(
    "name, grey",
    [
        ("random", np.random.default_rng(0).integers(0, 256, (200, 330), dtype=np.uint8)),
        ("photo", None),
        ("flat", np.full((128, 128), 77, np.uint8)),
        ("two_levels", (np.indices((130, 200)).sum(axis=0) % 2 * 255).astype(np.uint8)),
        ("ramp", (np.add.outer(np.arange(192), np.arange(256)) % 256).astype(np.uint8)),
        # the kernel's three count-matrix strides: level ranges < 16, < 32 and up to 64, away from 0
        ("range_10", np.random.default_rng(1).integers(100, 140, (128, 192), dtype=np.uint8)),
        ("range_25", np.random.default_rng(2).integers(60, 160, (128, 192), dtype=np.uint8)),
        ("range_64", np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)),
        (
            "mixed_ranges",
            np.concatenate(
                [
                    np.random.default_rng(4).integers(0, 256, (64, 320), dtype=np.uint8),
                    np.random.default_rng(5).integers(200, 220, (64, 320), dtype=np.uint8),
                ]
            ),
        ),
    ],
)
def test_equals_the_per_patch_scikit_image_procedure(name, grey):
    grey = _photo_grey() if grey is None else grey
    ours, ref = patch_entropies(grey), reference_patch_entropies(grey)
    assert ours.shape == ref.shape == ((grey.shape[0] // 64) * (grey.shape[1] // 64),)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    assert glcm_score(grey) == pytest.approx(float(ref.mean()), abs=1e-12)


def test_strided_view_and_exact_ranges():
    """A non-contiguous view gives the same values as its copy; each stride's boundary range is exact."""
    rng = np.random.default_rng(6)
    big = rng.integers(0, 256, (300, 400), dtype=np.uint8)
    view = big[10:266:2, 3:390]  # 128 x 387, strided rows
    np.testing.assert_array_equal(patch_entropies(view), patch_entropies(np.ascontiguousarray(view)))
    for levels in (15, 16, 31, 32, 64):  # quantised ranges at the stride switch points
        grey = (rng.integers(0, levels, (64, 128)) * 4 + 1).astype(np.uint8)
        np.testing.assert_allclose(patch_entropies(grey), reference_patch_entropies(grey), rtol=0, atol=1e-9)
    import numba

    assert patch_entropies(view, threads=1).tolist() == patch_entropies(view).tolist()
    assert numba.get_num_threads() == 1  # the job's thread count holds for the kernel
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    with pytest.raises(ValueError, match="uint8"):
        patch_entropies(np.zeros((64, 64), np.uint16))


def test_known_answers_and_edges():
    assert patch_entropies(np.full((64, 64), 200, np.uint8)).tolist() == pytest.approx(
        [
            # one distinct non-zero value per slice group: 16 slices each hold 1 non-zero entry, equal values
            # across slices with the same pair count; the rest are zeros
            reference_patch_entropies(np.full((64, 64), 200, np.uint8))[0]
        ]
    )
    assert math.isnan(glcm_score(np.zeros((63, 500), np.uint8)))  # no whole patch
    assert len(patch_entropies(np.zeros((127, 130), np.uint8))) == 2  # partial strips are not patches
    # scikit-image rounds the 45/135 degree offsets: distances 1 and 2 give the same (1, +-1)
    assert offsets()[[1, 5]].tolist() == [[1, 1], [1, 1]] and offsets()[[3, 7]].tolist() == [[1, -1], [1, -1]]
