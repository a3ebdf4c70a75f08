"""`sda denoise` methods, uncertainty maps, estimated sigma and tiling, end to end on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import ok, sda

FAST = {
    "posterior": ["--steps", "3"],
    "mean": ["--steps", "3", "--samples", "3"],
    "langevin": ["--levels", "2", "--steps", "2"],
    "guided": ["--steps", "3", "--t-start", "0.4", "--strength", "0.2"],
    "sda": ["--steps", "3"],
}


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("noisy")
    ok("noise", image_dir / "img_002.png", "--sigma", "0.1", "-o", folder / "noisy.npy", "--seed", "0")
    return folder / "noisy.npy"


@pytest.mark.parametrize("method", sorted(FAST))
def test_each_method_writes_a_seeded_image_of_the_input_shape(
    method: str, tmp_path: Path, tiny_model: Path, noisy: Path
) -> None:
    outputs = {}
    for name, seed in [("a", "1"), ("b", "1"), ("c", "2")]:
        target = tmp_path / f"{name}.npy"
        ok("denoise", noisy, "--sigma", "0.1", "--model", tiny_model, "--method", method, *FAST[method],
           "--seed", seed, "-o", target)  # fmt: skip
        outputs[name] = np.load(target)
    assert outputs["a"].shape == np.load(noisy).shape and np.isfinite(outputs["a"]).all()
    assert np.array_equal(outputs["a"], outputs["b"])
    assert not np.array_equal(outputs["a"], outputs["c"])


def test_mean_and_std_are_those_of_the_same_draws(tmp_path: Path, tiny_model: Path, noisy: Path) -> None:
    """With one seed, posterior and mean draw the same K samples: the first draw, their mean and their spread."""
    k = 4
    for method in ("posterior", "mean"):
        ok("denoise", noisy, "--sigma", "0.1", "--model", tiny_model, "--method", method, "--samples", str(k),
           "--steps", "3", "--seed", "7", "-o", tmp_path / f"{method}.npy",
           "--std", tmp_path / f"{method}_std.npy")  # fmt: skip
    first, mean = np.load(tmp_path / "posterior.npy"), np.load(tmp_path / "mean.npy")
    std = np.load(tmp_path / "mean_std.npy")
    assert np.array_equal(std, np.load(tmp_path / "posterior_std.npy"))
    assert std.shape == mean.shape and (std >= 0).all() and std.max() > 0
    # one draw's squared deviation from the mean is at most the sum of all K, (K - 1) s^2 (pixel units)
    assert ((first - mean) ** 2 <= (k - 1) * std.astype(np.float64) ** 2 + 1e-6).all()
    assert not np.array_equal(first, mean)


def test_std_of_a_grey_image_is_grey(tmp_path: Path, tiny_model: Path, image_dir: Path) -> None:
    Image.open(image_dir / "img_003.png").convert("L").save(tmp_path / "grey.png")
    ok("denoise", tmp_path / "grey.png", "--sigma", "0.1", "--model", tiny_model, "--method", "posterior",
       "--samples", "2", "--steps", "2", "--seed", "0", "-o", tmp_path / "out.png",
       "--std", tmp_path / "std.png")  # fmt: skip
    assert Image.open(tmp_path / "out.png").mode == "L" and Image.open(tmp_path / "std.png").mode == "L"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--std", "{tmp}/s.png"], "(--std) needs 2 draws"),
        (["--method", "posterior", "--std", "{tmp}/s.png"], "(--std) needs 2 draws"),
        (["--samples", "4"], "samples needs a sampling method: mmse is one estimate"),
        (["--method", "ddpm"], "unknown method 'ddpm'; expected one of mmse, posterior, mean, pnp"),
        (["--method", "langevin", "--step-size", "2"], "step_size must lie in (0, 2)"),
        (["--method", "guided", "--t-start", "0"], "t_start must lie in (0, 1]"),
        (["--method", "mean", "--std", "{tmp}/noisy.png"], "would overwrite an input; choose another path"),
        (["--method", "mean", "--std", "{tmp}/out.png", "--force"], "is also the main output"),
    ],
)
def test_bad_method_options_get_one_line(
    args: list[str], message: str, tmp_path: Path, tiny_model: Path, image_dir: Path
) -> None:
    Image.open(image_dir / "img_000.png").save(tmp_path / "noisy.png")
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = sda("denoise", tmp_path / "noisy.png", "--sigma", "0.1", "--model", tiny_model, "--steps", "2",
                 "-o", tmp_path / "out.png", *filled)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def smooth_image(rows: int, cols: int) -> np.ndarray:
    """A smooth colour pattern in [0.2, 0.8], float ``(rows, cols, 3)``."""
    y, x = np.mgrid[0:rows, 0:cols] / 40
    return 0.5 + 0.3 * np.sin(2 * np.pi * (y[..., None] + x[..., None] * [1.0, 0.7, 0.4]))


def test_sigma_auto_estimates_and_uses_the_noise_level(tmp_path: Path, tiny_model: Path) -> None:
    np.save(tmp_path / "clean.npy", smooth_image(64, 64).astype(np.float32))
    ok("noise", tmp_path / "clean.npy", "--sigma", "0.15", "-o", tmp_path / "noisy.npy", "--seed", "0")
    # fp32: under bf16 a change of the 5th digit of sigma can flip roundings inside the network
    exact = ["--model", tiny_model, "--precision", "fp32"]
    result = ok("denoise", tmp_path / "noisy.npy", "--sigma", "auto", *exact, "-o", tmp_path / "a.npy")
    estimate = float(result.stderr.split("estimated sigma ")[1].split()[0])
    assert abs(estimate - 0.15) < 0.15 * 0.1, result.stderr
    ok("denoise", tmp_path / "noisy.npy", "--sigma", str(estimate), *exact, "-o", tmp_path / "b.npy")
    # the printed estimate has 4 digits: the outputs agree up to that rounding
    assert np.allclose(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"), atol=1e-3)


def test_large_images_are_denoised_in_tiles_without_seams(tmp_path: Path, tiny_model: Path) -> None:
    """A 72x96 image in 32-pixel tiles: same shape, and close to the untiled result everywhere (no seam)."""
    rng = np.random.default_rng(0)
    clean = smooth_image(72, 96)
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    np.save(tmp_path / "noisy.npy", noisy.astype(np.float32))
    for name, tile in [("tiled", "32"), ("whole", "128")]:
        ok("denoise", tmp_path / "noisy.npy", "--sigma", "0.1", "--model", tiny_model, "--tile", tile,
           "-o", tmp_path / f"{name}.npy")  # fmt: skip
    tiled, whole = np.load(tmp_path / "tiled.npy"), np.load(tmp_path / "whole.npy")
    assert tiled.shape == whole.shape == clean.shape
    # tiles see less context (normalisation, attention), so they differ a little, but nowhere by a step
    assert np.abs(tiled - whole).max() < 0.05
    assert np.mean((tiled - clean) ** 2) < np.mean((noisy - clean) ** 2)
