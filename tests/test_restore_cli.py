"""`sda degrade` and `sda restore` end to end, and the pipeline ``sda_cli.restore.restore`` behind them.

degrade is checked against the operators and against scipy (blur, block average, mask, seeded noise); restore runs
each method on the tiny model, equals its Python API, and with no operator equals ``denoise``; every bad kernel, mask
or size gets a one-line error, a non-zero exit code and no output.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from test_cli import ok, sda
from test_restore import IndependentPixels

from sda_cli import denoise, load_model, restore
from sda_cli.guidance import METHODS
from sda_cli.operators import Blur, make_operator
from sda_cli.restore import model_units
from sda_cli.seeds import seeded_generator

RESTORE_METHODS = [name for name, kind in METHODS.items() if not kind.identity_only]
SAMPLING_METHODS = [name for name in RESTORE_METHODS if METHODS[name].draws]

FAST = ["--steps", "2"]


def smooth(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image in [0.1, 0.9], float32 ``(rows, cols, 3)``."""
    phase = np.random.default_rng(seed).uniform(0, 6, 3)
    y, x = np.mgrid[0:rows, 0:cols] / 12
    return (0.5 + 0.4 * np.sin(y[..., None] + 0.7 * x[..., None] + phase)).astype(np.float32)


def save_mask(path: Path, rows: int, cols: int, hole: tuple[slice, slice]) -> np.ndarray:
    """A white mask with a black hole, as an 8-bit PNG; returns it as 0/1."""
    mask = np.ones((rows, cols), np.uint8)
    mask[hole] = 0
    Image.fromarray(mask * 255).save(path)
    return mask.astype(np.float64)


def gaussian(s: float) -> np.ndarray:
    """The issue's kernel: exp(-(i^2 + j^2) / 2 S^2) on a (2 ceil(3S) + 1)^2 grid, normalised to sum 1."""
    r = math.ceil(3 * s)
    i = np.arange(-r, r + 1)
    k = np.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / (2 * s**2))
    return k / k.sum()


def test_degrade_is_the_operator_plus_seeded_noise(tmp_path: Path) -> None:
    """blur, block average, mask, then noise: the .npy output equals scipy's convolution (reflect boundary), the
    2x2 block means, the mask and the 'degrade' stream's noise at the observation's size, missing pixels 0; and
    equals the operators of sda_cli.operators applied to the same image."""
    clean = smooth(16, 20)
    np.save(tmp_path / "in.npy", clean)
    mask = save_mask(tmp_path / "m.png", 8, 10, (slice(2, 5), slice(3, 7)))
    ok("degrade", tmp_path / "in.npy", "--blur", "1.2", "--scale", "2", "--mask", tmp_path / "m.png",
       "--sigma", "0.05", "--seed", "3", "-o", tmp_path / "obs.npy")  # fmt: skip
    written = np.load(tmp_path / "obs.npy")
    assert written.shape == (8, 10, 3)
    blurred = np.stack([ndimage.convolve(clean[..., c].astype(np.float64), gaussian(1.2), mode="reflect")
                        for c in range(3)], axis=-1)  # fmt: skip
    means = blurred.reshape(8, 2, 10, 2, 3).mean(axis=(1, 3))
    generator, _ = seeded_generator(3, "degrade")
    noise = torch.randn((1, 3, 8, 10), generator=generator)[0].permute(1, 2, 0).double().numpy()
    expected = mask[..., None] * (means + 0.05 * noise)
    np.testing.assert_allclose(written, expected, rtol=0, atol=2e-6)
    assert (written[2:5, 3:7] == 0).all()
    operator = make_operator(blur=1.2, scale=2, mask=torch.from_numpy(mask))
    x = torch.from_numpy(clean).permute(2, 0, 1)[None]
    ours = operator.observed(operator(x) + 0.05 * torch.from_numpy(noise).permute(2, 0, 1)[None].float())
    np.testing.assert_allclose(written, ours[0].permute(1, 2, 0).numpy(), rtol=0, atol=1e-6)


def test_degrade_kernel_and_8_bit_output(tmp_path: Path) -> None:
    """--kernel is applied as given (here not symmetric: a true convolution, as scipy's); an 8-bit output is the
    clipped and quantised observation."""
    clean = smooth(12, 12, seed=1)
    np.save(tmp_path / "in.npy", clean)
    kernel = np.array([[0.0, 0.1, 0.0], [0.2, 0.5, 0.0], [0.0, 0.1, 0.1]])
    np.save(tmp_path / "k.npy", kernel)
    ok("degrade", tmp_path / "in.npy", "--kernel", tmp_path / "k.npy", "-o", tmp_path / "obs.png")
    written = np.asarray(Image.open(tmp_path / "obs.png"), dtype=np.float64) / 255
    expected = np.stack([ndimage.convolve(clean[..., c].astype(np.float64), kernel, mode="reflect")
                         for c in range(3)], axis=-1)  # fmt: skip
    assert np.abs(written - np.clip(expected, 0, 1)).max() <= 0.5 / 255 + 1e-6


def test_degrade_folder_with_a_folder_of_masks(tmp_path: Path, image_dir: Path) -> None:
    """Several inputs with --scale 2 and one mask per input, found by file name: each observation is 8x8, black
    exactly where its own mask is."""
    names = ["img_000.png", "img_001.png"]
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    holes = {}
    for i, name in enumerate(names):
        Image.open(image_dir / name).save(tmp_path / "in" / name)
        holes[name] = save_mask(tmp_path / "masks" / name, 8, 8, (slice(i, i + 3), slice(2 * i, 2 * i + 4)))
    ok("degrade", tmp_path / "in", "--scale", "2", "--mask", tmp_path / "masks", "-o", tmp_path / "obs")
    for name in names:
        written = np.asarray(Image.open(tmp_path / "obs" / name), dtype=np.float64)
        assert written.shape == (8, 8, 3)
        assert (written[holes[name] == 0] == 0).all() and (written[holes[name] == 1].sum(-1) > 0).all()


@pytest.mark.parametrize("method", SAMPLING_METHODS)
def test_restore_writes_full_size_estimates_and_std_maps(method: str, tmp_path: Path, tiny_model: Path) -> None:
    """Each method on a x2 downsampled, masked, noisy observation of a 16x16 image: a 16x16 estimate and std map,
    finite, the std positive somewhere; the same seed gives the same numbers."""
    np.save(tmp_path / "in.npy", smooth(16, 16))
    save_mask(tmp_path / "m.png", 8, 8, (slice(2, 5), slice(2, 5)))
    operator = ["--scale", "2", "--mask", tmp_path / "m.png", "--sigma", "0.05"]
    ok("degrade", tmp_path / "in.npy", *operator, "--seed", "0", "-o", tmp_path / "obs.npy")
    for name in ("a", "b"):
        ok("restore", tmp_path / "obs.npy", *operator, "--method", method, *FAST, "--samples", "2",
           "--std", tmp_path / f"{name}_std.npy", "--model", tiny_model, "--seed", "1",
           "-o", tmp_path / f"{name}.npy")  # fmt: skip
    estimate, std = np.load(tmp_path / "a.npy"), np.load(tmp_path / "a_std.npy")
    assert estimate.shape == std.shape == (16, 16, 3)
    assert np.isfinite(estimate).all() and (std >= 0).all() and std.max() > 0
    assert np.array_equal(estimate, np.load(tmp_path / "b.npy"))


def test_decimation_with_circular_boundaries(tmp_path: Path, tiny_model: Path) -> None:
    """DPIR's super-resolution degradation: ``--kernel K --boundary circular --decimate 2`` writes scipy's wrapping
    convolution with every second pixel kept from the first, plus the seeded noise; ``restore`` with the same options
    gives a full-size estimate that is not the observation's pixels repeated."""
    clean = smooth(16, 20)
    np.save(tmp_path / "in.npy", clean)
    np.save(tmp_path / "k.npy", gaussian(1.0))
    operator = ["--kernel", tmp_path / "k.npy", "--boundary", "circular", "--decimate", "2", "--sigma", "0.02"]
    ok("degrade", tmp_path / "in.npy", *operator, "--seed", "4", "-o", tmp_path / "obs.npy")
    written = np.load(tmp_path / "obs.npy")
    wrapped = np.stack([ndimage.convolve(clean[..., c].astype(np.float64), gaussian(1.0), mode="wrap")
                        for c in range(3)], axis=-1)  # fmt: skip
    generator, _ = seeded_generator(4, "degrade")
    noise = torch.randn((1, 3, 8, 10), generator=generator)[0].permute(1, 2, 0).double().numpy()
    np.testing.assert_allclose(written, wrapped[::2, ::2] + 0.02 * noise, rtol=0, atol=2e-6)
    ok("restore", tmp_path / "obs.npy", *operator, "--steps", "2", "--model", tiny_model, "-o", tmp_path / "x.npy")
    estimate = np.load(tmp_path / "x.npy")
    assert estimate.shape == (16, 20, 3) and np.isfinite(estimate).all()
    assert float(np.abs(estimate[1::2, 1::2] - written).max()) > 1e-3


def test_pnp_is_one_estimate(tmp_path: Path, tiny_model: Path) -> None:
    """The default method, pnp, writes one full-size estimate, the same for any seed; asked for draws or a std map it
    says to use a sampling method, exits 2 and writes nothing."""
    np.save(tmp_path / "in.npy", smooth(16, 16))
    operator = ["--scale", "2", "--sigma", "0.05"]
    ok("degrade", tmp_path / "in.npy", *operator, "--seed", "0", "-o", tmp_path / "obs.npy")
    for seed in ("1", "2"):
        ok("restore", tmp_path / "obs.npy", *operator, "--steps", "3", "--model", tiny_model, "--seed", seed,
           "-o", tmp_path / f"{seed}.npy")  # fmt: skip
    estimate = np.load(tmp_path / "1.npy")
    assert estimate.shape == (16, 16, 3) and np.isfinite(estimate).all()
    assert np.array_equal(estimate, np.load(tmp_path / "2.npy"))
    for extra in (["--samples", "2"], ["--samples", "2", "--std", tmp_path / "std.npy"]):
        result = sda("restore", tmp_path / "obs.npy", *operator, *extra, "--model", tiny_model,
                         "-o", tmp_path / "draws.npy")  # fmt: skip
        assert result.returncode == 2 and "samples needs a sampling method: pnp is one estimate" in result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "draws.npy").exists() and not (tmp_path / "std.npy").exists()


def test_python_api_equals_the_command_line(tmp_path: Path, tiny_model: Path, image_dir: Path) -> None:
    """``restore`` with the CLI's seed gives the numbers of ``sda restore``, on an 8-bit blurred observation."""
    ok("degrade", image_dir / "img_005.png", "--blur", "1", "--sigma", "0.05", "--seed", "0", "-o", tmp_path / "o.png")
    ok("restore", tmp_path / "o.png", "--blur", "1", "--sigma", "0.05", "--method", "diffpir", "--steps", "3",
       "--samples", "2", "--std", tmp_path / "std.npy", "--model", tiny_model, "--precision", "fp32", "--seed", "4",
       "-o", tmp_path / "out.npy")  # fmt: skip
    model = load_model(tiny_model, device="cpu", precision="fp32")
    pixels = torch.from_numpy(np.asarray(Image.open(tmp_path / "o.png"), dtype=np.float32) / 255).permute(2, 0, 1)
    estimate, std = restore(model, pixels, 0.05, Blur(1.0), method="diffpir", steps=3, samples=2, bit_depth=8, seed=4)
    assert std is not None
    np.testing.assert_allclose(estimate.numpy(), np.load(tmp_path / "out.npy").transpose(2, 0, 1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), np.load(tmp_path / "std.npy").transpose(2, 0, 1), rtol=0, atol=1e-6)


def test_no_operator_is_denoise(tmp_path: Path, tiny_model: Path, image_dir: Path) -> None:
    """Without an operator, restore is denoise through the same method and seed: the same draw for one sample, the
    same spread for several (restore returns their mean), from Python and from the command line (8-bit input, so
    that the clipped-pixel imputation runs too)."""
    model = load_model(tiny_model, device="cpu", precision="fp32")
    pixels = torch.from_numpy(np.asarray(Image.open(image_dir / "img_006.png"), dtype=np.float32) / 255)
    pixels = pixels.permute(2, 0, 1)
    for samples in (1, 3):
        options = {"method": "sda", "steps": 2, "samples": samples, "bit_depth": 8, "seed": 2}
        ours, our_std = restore(model, pixels, 0.1, **options)
        theirs, their_std = denoise(model, pixels, 0.1, **options)
        if samples == 1:
            assert torch.equal(ours, theirs) and our_std is None and their_std is None
        else:
            assert our_std is not None and their_std is not None and torch.equal(our_std, their_std)
    for command in ("restore", "denoise"):
        ok(command, image_dir / "img_006.png", "--sigma", "0.1", "--method", "sda", *FAST, "--model", tiny_model,
           "--seed", "8", "-o", tmp_path / f"{command}.npy")  # fmt: skip
    assert np.array_equal(np.load(tmp_path / "restore.npy"), np.load(tmp_path / "denoise.npy"))


def test_noise_free_observations() -> None:
    """sigma 0: pnp, mmps, dps and diffpir take it, sda says it cannot; with a mask, the clipped-pixel imputation of an
    8-bit file touches observed pixels at 0 or 1 only, never the missing ones (written as 0)."""
    model = IndependentPixels(0.3)
    pixels = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for method in ("pnp", "mmps", "dps", "diffpir"):
        estimate, _ = restore(model, pixels, 0.0, method=method, steps=2, tile=32, seed=0)
        assert estimate.shape == pixels.shape and bool(estimate.isfinite().all())
    with pytest.raises(ValueError, match="sda cannot take a noise-free observation"):
        restore(model, pixels, 0.0, method="sda")
    mask = torch.ones(8, 8)
    mask[:, :4] = 0
    observed = pixels * mask
    observed[0, 0, 0, 6] = 0.0  # an observed pixel clipped at 0
    y = model_units(observed, 0.2, make_operator(mask=mask), (1, 8, 8), 2 / 255)
    assert bool((y[..., :4] == 0).all()) and float(y[0, 0, 0, 6]) < -1
    unchanged = model_units(observed, 0.0, make_operator(mask=mask), (1, 8, 8), 2 / 255)
    assert float(unchanged[0, 0, 0, 6]) == -1


@pytest.mark.parametrize(("size", "tile"), [(20, 16), (8, 32)])
@pytest.mark.parametrize("method", RESTORE_METHODS)
def test_progress_counts_every_tile_the_network_evaluates(method: str, size: int, tile: int) -> None:
    """The progress count reaches its announced total exactly, in steps that never go back, for images in tiles
    (the backward passes split in two) and for small images in one call."""
    calls: list[tuple[int, int]] = []
    pixels = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(1))
    samples = 2 if method in SAMPLING_METHODS else 1
    restore(IndependentPixels(0.3), pixels, 0.1, make_operator(blur=1.0, scale=2), method=method, steps=2,
            samples=samples, tile=tile, seed=0, progress=lambda *c: calls.append(c))  # fmt: skip
    done = [d for d, _ in calls]
    assert len({total for _, total in calls}) == 1 and done == sorted(done)
    assert done[-1] == calls[-1][1] > 0, calls[-3:]


def write_bad_inputs(folder: Path, image_dir: Path) -> None:
    """The files the failure cases use."""
    Image.open(image_dir / "img_000.png").save(folder / "in.png")
    Image.fromarray(np.zeros((15, 16, 3), np.uint8)).save(folder / "odd.png")
    np.save(folder / "even.npy", np.ones((2, 3)))
    np.save(folder / "flat.npy", np.ones((3, 3, 3)))
    np.save(folder / "nan.npy", np.array([[0.0, np.nan, 0.0]]))
    np.save(folder / "zero.npy", np.array([[1.0, -2.0, 1.0]]))
    (folder / "text.npy").write_text("not an array")
    save_mask(folder / "small.png", 8, 8, (slice(0, 2), slice(0, 2)))
    (folder / "masks").mkdir()


BAD = [
    (["--kernel", "even.npy"], 2, "--kernel {tmp}/even.npy: a kernel needs odd sides"),
    (["--kernel", "flat.npy"], 2, "a kernel must be a 2-D array"),
    (["--kernel", "nan.npy"], 2, "the kernel holds NaN or infinite values"),
    (["--kernel", "zero.npy"], 2, "the kernel sums to 0"),
    (["--kernel", "text.npy"], 2, "cannot read it as a NumPy array"),
    (["--mask", "nothing.png"], 2, "no such file"),
    (["--mask", "small.png"], 1, "in.png: the mask is 8×8 pixels but the observation is 16×16: give a mask of 16×16"),
    (["--mask", "masks"], 1, "no mask named in.png in"),
    (["--blur", "0"], 2, "--blur must be a positive number"),
    (["--sigma", "-0.1"], 2, "--sigma must be"),
    (["--decimate", "2"], 2, "--decimate keeps every K-th pixel of a blurred image; without --blur or --kernel"),
    (["--boundary", "wrap", "--blur", "1"], 2, "--boundary must be one of reflect, circular, not 'wrap'"),
    (["--boundary", "circular"], 2, "--boundary is for a blur or a kernel"),
]


@pytest.mark.parametrize(("args", "code", "message"), BAD)
@pytest.mark.parametrize("command", ["degrade", "restore"])
def test_bad_inputs_get_one_line_and_write_nothing(
    command: str, args: list[str], code: int, message: str, tmp_path: Path, tiny_model: Path, image_dir: Path
) -> None:
    write_bad_inputs(tmp_path, image_dir)
    filled = [str(tmp_path / a) if a.endswith((".npy", ".png")) or a == "masks" else a for a in args]
    model = ["--model", tiny_model, *FAST] if command == "restore" else []
    result = sda(command, tmp_path / "in.png", *filled, *model, "-o", tmp_path / "out.png")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert message.replace("{tmp}", str(tmp_path)) in lines[0], result.stderr
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["degrade", "odd.png", "--scale", "2"], "odd.png: the image is 15×16 pixels, not a multiple of the scale 2"),
        (["restore", "in.png", "--method", "sda"], "method sda cannot take a noise-free observation (sigma 0)"),
        (["restore", "in.png", "--method", "mmse"], "method mmse cannot take a noise-free observation"),
        (["restore", "in.png", "--scale", "2", "--sigma", "0.1", "--method", "mean"], "method mean denoises only"),
        (["restore", "in.png", "--method", "mmps", "--samples", "1", "--std", "s.png"], "(--std) needs 2 draws"),
    ],
)
def test_bad_sizes_and_options_get_one_line(args: list[str], message: str, tmp_path: Path, image_dir: Path) -> None:
    write_bad_inputs(tmp_path, image_dir)
    command, source, *rest = args
    rest = [str(tmp_path / a) if a.endswith(".png") else a for a in rest]
    result = sda(command, tmp_path / source, *rest, "-o", tmp_path / "out.png")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert message in lines[0], result.stderr
    assert not (tmp_path / "out.png").exists()
