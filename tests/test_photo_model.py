"""The photo model's pieces: random dihedral crops of full-size photos, the space-to-depth stem, the local network,
and training and denoising with them from the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import run_sda
from PIL import Image

from sda_cli.data import cifar_mosaics, half_size, photo_folder
from sda_cli.unet import UNet, UNetConfig

LOCAL = UNetConfig(channels=3, widths=(8, 16), blocks=1, attention_levels=(), patch=2, norm="none")


def test_crops_are_windows_turned_by_the_eight_dihedral_maps(tmp_path: Path) -> None:
    """Crops of a whole 6x6 image are exactly its 8 flips and rotations, each drawn; crops of a larger image are
    windows of it, turned."""
    values = np.arange(6 * 6 * 3, dtype=np.uint8).reshape(6, 6, 3)
    Image.fromarray(values).save(tmp_path / "a.png")
    data = photo_folder(tmp_path, crop=6)
    batch = data.batch(400, torch.Generator().manual_seed(0))
    image = torch.from_numpy(values).permute(2, 0, 1).float().div(127.5).sub(1)
    maps = [image.rot90(k, (1, 2)) for k in range(4)]
    maps += [m.flip(-1) for m in maps]
    seen = {next(i for i, m in enumerate(maps) if torch.equal(crop, m)) for crop in batch}
    assert seen == set(range(8))
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "a.png").unlink()
    big = photo_folder(tmp_path, crop=8)
    assert all(_is_turned_window(crop, big.images[0]) for crop in big.batch(20, torch.Generator().manual_seed(2)))


def test_half_scale_adds_each_photo_downscaled_by_two_when_it_still_holds_a_crop(tmp_path: Path) -> None:
    """``half_scale`` adds the 2x2 block means (rounded) of each photo whose halves keep a crop's side: a 17x21
    photo gives an 8x10 one at crop 8, a 12x30 photo (6x15) none; half the crops then come from the halves."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (17, 21, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    Image.fromarray(rng.integers(0, 256, (12, 30, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    data = photo_folder(tmp_path, crop=8, half_scale=True)
    assert len(data.images) == 3 and "(+ 1 at half scale)" in data.name
    blocks = big[:16, :20].astype(np.float64).reshape(8, 2, 10, 2, 3).mean(axis=(1, 3))
    expected = torch.from_numpy(np.floor(blocks + 0.5).astype(np.uint8)).permute(2, 0, 1)
    assert torch.equal(half_size(data.images[0]), expected)
    assert any(torch.equal(image, expected) for image in data.images)
    assert len(photo_folder(tmp_path, crop=8).images) == 2
    crops = data.batch(600, torch.Generator().manual_seed(0))
    from_half = sum(_is_turned_window(crop, expected) for crop in crops)
    assert 150 < from_half < 250, from_half  # one image in three is the half-scale one


def test_cifar_mosaics_hold_every_image_in_a_grid() -> None:
    """10 images in 2 mosaics: 3x3 tiles each (k = ceil(sqrt(5))), every tile one whole image, every image in one."""
    images = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 3, 4, 4).contiguous()
    mosaics = cifar_mosaics(images, 2, torch.Generator().manual_seed(0))
    assert [tuple(m.shape) for m in mosaics] == [(3, 12, 12)] * 2
    tiles = [m[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] for m in mosaics for i in range(3) for j in range(3)]
    assert all(bool((tile == tile[0, 0, 0]).all()) for tile in tiles)
    assert sorted({int(tile[0, 0, 0]) for tile in tiles}) == list(range(10))


def test_train_on_photos_with_half_scale_and_cifar_mosaics(tmp_path: Path, shared_cifar: Path) -> None:
    """``--half-scale --mix-cifar 0.5``: the model records photos, their halves and as many CIFAR-10 mosaics."""
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(tmp_path / f"{index}.png")
    model = tmp_path / "photo.safetensors"
    result = run_sda("train", "--dataset", tmp_path, "--crop", "16", "--half-scale", "--mix-cifar", "0.5",
                     "--data-dir", shared_cifar, "--patch", "2", "--widths", "8,16", "--blocks", "1", "--attention",
                     "none", "--norm", "none", "--steps", "1", "--batch-size", "2", "-o", model, "-q")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(+ 3 at half scale) (+ 6 mosaics of CIFAR-10, 50% of the images)" in run_sda("info", model).stdout


def _is_turned_window(crop: torch.Tensor, image: torch.Tensor) -> bool:
    """Whether ``crop`` (model units) is a window of the uint8 ``image``, flipped or turned by 90° steps."""
    side = crop.shape[-1]
    full = image.float().div(127.5).sub(1)
    windows = full.unfold(1, side, 1).unfold(2, side, 1).permute(1, 2, 0, 3, 4).reshape(-1, image.shape[0], side, side)
    turns = [crop.flip(-1).rot90(-k, (1, 2)) for k in range(4)] + [crop.rot90(-k, (1, 2)) for k in range(4)]
    return any(bool((windows == turn).all(dim=(1, 2, 3)).any()) for turn in turns)


def test_local_network_output_does_not_see_far_pixels() -> None:
    """With the pixel-unshuffle stem, no attention and no group norm, the network is local: changing the image far
    from a pixel leaves that pixel's output unchanged; with group norm it would change everywhere."""
    torch.manual_seed(0)
    for norm, local in (("none", True), ("group", False)):
        config = UNetConfig(**{**LOCAL.to_dict(), "norm": norm, "groups": 4})
        network = UNet(config).eval()
        for parameter in network.parameters():  # zero-initialised output layers would hide any dependence
            torch.nn.init.normal_(parameter, std=0.2)
        z = torch.randn(1, 3, 96, 96)
        far = z.clone()
        far[..., :8, :8] += 5.0
        with torch.no_grad():
            out, moved = network(z, torch.zeros(1)), network(far, torch.zeros(1))
        assert out.shape == z.shape
        corner = (out[..., 80:, 80:] - moved[..., 80:, 80:]).abs().max()
        assert (float(corner) == 0.0) == local, (norm, float(corner))


def test_train_and_denoise_a_photo_model(tmp_path: Path, image_dir: Path) -> None:
    """``sda train --crop --patch --norm none --attention none`` writes a model that records them, and ``sda denoise``
    runs it on an image larger than its crops and its tiles."""
    model = tmp_path / "photo.safetensors"
    result = run_sda("train", "--dataset", image_dir, "--crop", "16", "--patch", "2", "--widths", "8,16",
                     "--blocks", "1", "--attention", "none", "--norm", "none", "--steps", "2", "--batch-size", "4",
                     "--checkpoint-every", "2", "-o", model, "-q")  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = run_sda("info", model)
    assert '"patch": 2' in info.stdout and '"norm": "none"' in info.stdout and '"attention_levels": []' in info.stdout
    noisy = tmp_path / "noisy.npy"
    np.save(noisy, np.random.default_rng(0).uniform(0, 1, (72, 80, 3)).astype(np.float32))
    result = run_sda("denoise", noisy, "--sigma", "0.1", "--model", model, "--tile", "32", "-o", tmp_path / "out.npy")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "out.npy").shape == (72, 80, 3)
    bad = run_sda("train", "--dataset", image_dir, "--crop", "14", "--patch", "2", "--widths", "8,16", "-o", model)
    assert bad.returncode == 2 and "--crop must be a multiple of 4" in bad.stderr


def test_each_command_has_its_default_shipped_model(tmp_path: Path) -> None:
    """Without --model, ``denoise`` and ``restore`` run the shipped photo model, ``sample`` the CIFAR-10 one."""
    image = tmp_path / "in.npy"
    np.save(image, np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32))
    runs = [
        ("photo", ["denoise", image, "--sigma", "0.1"]),
        ("photo", ["restore", image, "--scale", "2", "--sigma", "0.05", "--method", "pnp", "--steps", "1"]),
        ("cifar10", ["sample", "-n", "1", "--steps", "1"]),
    ]
    for name, args in runs:
        result = run_sda(*args, "-o", tmp_path / f"{args[0]}.png", "--verbose", "-q")
        assert result.returncode == 0, result.stderr
        assert f"{name}.safetensors" in result.stderr, (args[0], result.stderr)
