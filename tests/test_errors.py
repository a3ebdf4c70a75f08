"""Bad input through the real CLI: one line on stderr (``error: ...``), the documented exit code, no traceback.

The runs call ``sda_cli.cli.main`` in this process (``run_sda`` in conftest.py), as the ``sda`` script does; exit codes
seen from a new process are checked in test_cli.py and test_interrupt.py.

Exit codes (README): 1 a file, checkpoint or data set could not be used; 2 a bad option value or usage.
Cases that test_cli.py already covers (negative, zero and NaN sigma, ``1/0``, ``25``, a missing input, an output
that overwrites its input, a missing or non-safetensors model, a folder without images) are not repeated here.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Run, run_sda
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import sda_cli.checkpoint
import sda_cli.images
from sda_cli.checkpoint import CheckpointError, parameter_count, read_checkpoint, read_metadata, save_model
from sda_cli.images import ImageError, read_image, write_image
from sda_cli.unet import UNet, UNetConfig


def sda(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    """Run the CLI as a user does; never downloads, and shows tracebacks only when ``env`` asks."""
    return run_sda(*args, env=env)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_line(result: Run, message: str, code: int) -> None:
    lines = error_lines(result.stderr)
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def png_bomb(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A PNG whose header claims width × height RGB pixels, with almost no data: refused before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def rewrite_checkpoint(source: Path, target: Path, *, metadata=None, change=None) -> Path:
    """Copy a checkpoint's tensors and metadata, with the metadata replaced or a tensor changed."""
    with safe_open(str(source), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        original = handle.metadata()
    if change is not None:
        change(tensors)
    save_file(tensors, str(target), metadata=original if metadata is None else metadata)
    return target


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, image_dir: Path) -> Path:
    """Damaged images and checkpoints, and a grey model trained by `sda train --channels 1`."""
    folder = tmp_path_factory.mktemp("bad")
    good = (image_dir / "img_000.png").read_bytes()
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text.png").write_bytes(b"this is not an image\n")
    png_bomb(folder / "bomb.png")
    (folder / "copies").mkdir()
    (folder / "copies" / "img_000.png").write_bytes((image_dir / "img_001.png").read_bytes())

    model = tiny_model.read_bytes()
    (folder / "truncated.safetensors").write_bytes(model[: len(model) // 2])
    save_file({"w": torch.zeros(2)}, str(folder / "plain.safetensors"))
    config = read_metadata(tiny_model)
    rewrite_checkpoint(tiny_model, folder / "future.safetensors", metadata={"sda": json.dumps({**config, "format": 2})})

    def squash(tensors: dict[str, torch.Tensor]) -> None:
        tensors["stem.weight"] = tensors["stem.weight"][:, :1].contiguous()

    rewrite_checkpoint(tiny_model, folder / "shapes.safetensors", change=squash)
    huge = {**config, "model": {**config["model"], "widths": [4096] * 8, "blocks": 16}}
    save_file({"w": torch.zeros(2)}, str(folder / "huge.safetensors"), metadata={"sda": json.dumps(huge)})
    return folder


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> tuple[Path, Run]:
    """A 1-channel model trained from a folder that also holds two unreadable image files."""
    data = tmp_path_factory.mktemp("mixed")
    for source in sorted(image_dir.glob("*.png"))[:8]:
        shutil.copy(source, data)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (data / "sub").mkdir()
    (data / "sub" / "notes.jpg").write_text("not a jpeg")
    out = tmp_path_factory.mktemp("grey") / "grey.safetensors"
    result = sda(
        "train", "--dataset", data, "--channels", "1", "--image-size", "16", "--widths", "16,32", "--blocks", "1",
        "--attention", "1", "--steps", "2", "--batch-size", "4", "-o", out, "-q",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result


# ----------------------------------------------------------------------------------------------------------------
# One run over a folder: every bad file is reported on its own line, the good ones are written.

BAD_IMAGES = [
    ("empty.png", "file is empty (0 bytes)"),
    ("truncated.png", "may be truncated or corrupt"),
    ("text.png", "not an image Pillow can read"),
    ("bomb.png", "exceeds the limit of 100,000,000 (a guard against decompression bombs); if you trust the file"),
]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory, bad: Path, image_dir: Path, tiny_model: Path):
    inputs = tmp_path_factory.mktemp("inputs")
    for name, _ in BAD_IMAGES:
        shutil.copy(bad / name, inputs)
    shutil.copy(image_dir / "img_000.png", inputs / "a.png")
    shutil.copy(image_dir / "img_001.png", inputs / "z.png")
    out = inputs.parent / "denoised"
    # --max-pixels is offered by denoise too: the bomb claims 900 million pixels
    return sda(
        "denoise", inputs, "--sigma", "0.1", "-o", out, "--model", tiny_model, "--max-pixels", "100000000", "-q"
    ), out


@pytest.mark.parametrize("name, message", BAD_IMAGES, ids=[name for name, _ in BAD_IMAGES])
def test_each_bad_image_gets_one_line(folder_run, name: str, message: str) -> None:
    result, _ = folder_run
    lines = [line for line in error_lines(result.stderr) if name in line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_denoise_skips_bad_files_and_writes_the_others(folder_run) -> None:
    result, out = folder_run
    assert result.returncode == 1, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "z.png"]
    assert error_lines(result.stderr)[-1] == "4 of 6 files failed"
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# One run per case.

DENOISE = ["denoise", "{img}", "-o", "{tmp}/out.png", "--sigma", "0.1", "--model"]
CASES = {
    "max-pixels": (["noise", "{img}", "--sigma", "0.1", "-o", "{tmp}/x.png", "--max-pixels", "100"], "--max-pixels", 1),
    "sigma below the model's range": (
        ["denoise", "{img}", "-o", "{tmp}/out.png", "--model", "{model}", "--sigma", "1e-9"],
        "outside this model's noise range [0.0005, 500] (in [0, 1] pixel units)",
        2,
    ),
    "inflation sure with an estimated sigma": (
        "denoise {img} -o {tmp}/out.png --model {model} --sigma auto --method mean --inflation sure".split(),
        "--inflation sure needs the exact noise level (its estimate of the error moves by n·Δσ²): give --sigma as a "
        "number, or use --inflation auto",
        2,
    ),
    "inflation sure with one draw": (
        "denoise {img} -o {tmp}/out.png --model {model} --sigma 0.1 --method posterior --inflation sure".split(),
        "inflation sure scales the draws' own spread to the error it estimates: pass samples=2 or more (--samples 2)",
        2,
    ),
    # checkpoints
    "truncated checkpoint": (["info", "{bad}/truncated.safetensors"], "not a readable safetensors file", 1),
    "no sda metadata": ([*DENOISE, "{bad}/plain.safetensors"], "without sda metadata", 1),
    "future format": (
        ["sample", "-o", "{tmp}/s.png", "--model", "{bad}/future.safetensors"],
        "checkpoint format 2 is newer than this sda reads (1); upgrade sda",
        1,
    ),
    "tensor shapes": (
        [*DENOISE, "{bad}/shapes.safetensors"],
        "tensor stem.weight has shape (16, 1, 3, 3), the config needs (16, 3, 3, 3)",
        1,
    ),
    "huge config": (["info", "{bad}/huge.safetensors"], "more than the limit of 500,000,000", 1),
    "grey model, RGB image": (
        [*DENOISE, "{grey}"],
        "the image is RGB but the model is grey (1 channel); convert the image to grey, or pass an RGB model",
        1,
    ),
    "block counts to train": (
        ["train", "--dataset", "{tmp}", "--widths", "16,32", "--blocks", "2,1,1", "-o", "{tmp}/m.safetensors"],
        "--blocks needs one count, or one per level (2), each from 1 to 16",
        2,
    ),
    "half scale without crops": (
        ["train", "--dataset", "{tmp}", "--half-scale", "-o", "{tmp}/m.safetensors"],
        "--half-scale and --mix-cifar need --crop: they add images to the random crops",
        2,
    ),
    "huge widths to train": (
        [
            "train",
            "--dataset",
            "{tmp}",
            "--widths",
            "4096,4096,4096,4096",
            "--blocks",
            "16",
            "-o",
            "{tmp}/m.safetensors",
        ],
        "more than the limit of 500,000,000; change --widths, --blocks or --attention",
        2,
    ),
    # data sets
    "CIFAR-10 absent, no download": (
        ["train", "--data-dir", "{tmp}", "-o", "{tmp}/m.safetensors"],
        "CIFAR-10 not found in {tmp}; pass --data-dir DIR",
        1,
    ),
    # outputs
    "output under a file": (
        ["noise", "{img}", "--sigma", "0.1", "-o", "{bad}/text.png/x.png"],
        "cannot write the image (a parent of the path is a file, not a folder); choose another output path",
        1,
    ),
    "train output under a file": (
        ["train", "--dataset", "{tmp}", "-o", "{bad}/text.png/m.safetensors"],
        "m.safetensors: a parent of the path is a file, not a folder; choose another path",
        1,
    ),
    "two inputs, one output name": (
        ["noise", "{img}", "{bad}/copies/img_000.png", "--sigma", "0.1", "-o", "{tmp}/out"],
        "would both be written to",
        2,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_line_and_exit_code(
    case: str, tmp_path: Path, bad: Path, tiny_model: Path, grey_model, image_dir: Path
) -> None:
    args, message, code = CASES[case]
    places = {"img": image_dir / "img_000.png", "tmp": tmp_path, "bad": bad, "model": tiny_model, "grey": grey_model[0]}
    result = sda(*(a.format(**places) for a in args))
    assert_one_line(result, message.format(**places), code)
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "x.png").exists()


def test_unreadable_training_images_are_skipped_and_counted(grey_model) -> None:
    _, result = grey_model
    assert "8 images (2 unreadable files skipped)" in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# What works: every image mode is converted, not refused; tiny and large images; a large sigma in range.


def test_every_mode_and_size_is_denoised(tmp_path: Path, tiny_model: Path) -> None:
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(inputs / "palette.png")
    keyed = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    keyed.info["transparency"] = 0
    keyed.save(inputs / "palette_transparent.png", transparency=0)
    Image.fromarray(rgb).convert("CMYK").save(inputs / "cmyk.jpg")
    Image.fromarray(rgb).convert("CMYK").save(inputs / "cmyk.tif")
    Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16)).save(inputs / "grey16.png")
    write_image(inputs / "rgb16.png", torch.from_numpy(rng.random((3, 12, 10), dtype=np.float32)), bits=16)
    Image.fromarray(rng.integers(0, 256, (12, 10, 4), dtype=np.uint8), "RGBA").save(inputs / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (12, 10, 2), dtype=np.uint8), "LA").save(inputs / "la.png")
    Image.fromarray(rng.integers(0, 2, (12, 10), dtype=bool)).save(inputs / "bilevel.png")
    Image.fromarray(rgb[:1, :1]).save(inputs / "one_pixel.png")
    Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(inputs / "large.png")  # 6 × 4.5 tiles
    np.save(inputs / "floats.npy", rng.random((12, 10, 3), dtype=np.float32))
    result = sda("denoise", inputs, "--sigma", "0.1", "-o", tmp_path / "out", "--model", tiny_model, "-q")
    assert result.returncode == 0, result.stderr
    written = {p.name: p for p in (tmp_path / "out").iterdir()}
    assert sorted(written) == sorted(p.name for p in inputs.iterdir())
    for name, path in written.items():
        source, output = read_image(inputs / name), read_image(path)
        assert output.pixels.shape[1:] == source.pixels.shape[1:], name
    assert read_image(written["rgba.png"]).alpha is not None and read_image(written["la.png"]).mode == "L"
    assert read_image(written["grey16.png"]).bit_depth == 16 and read_image(written["rgb16.png"]).bit_depth == 16


def test_a_large_sigma_within_the_model_range_works(tmp_path: Path, tiny_model: Path, image_dir: Path) -> None:
    """The cosine schedule reaches sigma/alpha = 1000 in model units (500 in pixel units): 9 is within it."""
    result = sda("denoise", image_dir / "img_000.png", "--sigma", "9", "-o", tmp_path / "x.npy", "--model", tiny_model)
    assert result.returncode == 0, result.stderr
    assert np.isfinite(np.load(tmp_path / "x.npy")).all()


# ----------------------------------------------------------------------------------------------------------------
# Outputs


def test_missing_output_folders_are_created_and_force_overwrites(tmp_path: Path, image_dir: Path) -> None:
    target = tmp_path / "new" / "deeper" / "x.png"
    assert sda("noise", image_dir / "img_000.png", "--sigma", "0.1", "-o", target, "--seed", "0").returncode == 0
    before = target.read_bytes()
    result = sda("noise", target, "--sigma", "0.1", "-o", target, "--seed", "0", "--force")
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() != before
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]  # no temporary file left


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(tmp_path: Path, image_dir: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        result = sda("noise", image_dir / "img_000.png", "--sigma", "0.1", "-o", folder / "x.png")
    finally:
        folder.chmod(0o700)
    assert_one_line(result, "choose a writable folder for the output", 1)


def _no_space(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_keeps_the_old_image_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.png"
    write_image(target, torch.zeros(3, 4, 4))
    before = target.read_bytes()
    monkeypatch.setattr(sda_cli.images, "_save_pillow", _no_space)
    with pytest.raises(ImageError, match="no space left on the device") as info:
        write_image(target, torch.ones(3, 4, 4))
    assert "\n" not in str(info.value)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_full_disk_keeps_the_old_checkpoint_and_no_temporary(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m.safetensors"
    shutil.copy(tiny_model, target)
    denoiser, config = read_checkpoint(target)
    monkeypatch.setattr(sda_cli.checkpoint, "save_file", _no_space)
    with pytest.raises(CheckpointError, match="no space left on the device") as info:
        save_model(target, denoiser, config)
    assert "\n" not in str(info.value)
    assert target.read_bytes() == tiny_model.read_bytes() and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_full_disk_through_the_cli(tmp_path: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sda_cli.images, "_save_pillow", _no_space)
    target = tmp_path / "x.png"
    result = sda("noise", image_dir / "img_000.png", "--sigma", "0.1", "-o", target)
    assert result.returncode == 1 and error_lines(result.stderr) == [
        f"error: {target}: cannot write the image (no space left on the device); "
        "free some space or choose another output; any previous file is kept"
    ]
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_training_keeps_the_last_checkpoint(
    tmp_path: Path, image_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save, calls = sda_cli.checkpoint.save_file, []

    def fill_up(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) > 2:  # the model and state files of step 1 are written, then the disk is full
            _no_space()
        real_save(*args, **kwargs)

    monkeypatch.setattr(sda_cli.checkpoint, "save_file", fill_up)
    out = tmp_path / "m.safetensors"
    result = sda(
        "train", "--dataset", image_dir, "--image-size", "16", "--widths", "8,16",
        "--blocks", "1", "--attention", "1", "--steps", "3", "--batch-size", "2", "--checkpoint-every", "1",
        "-o", out, "-q",
    )  # fmt: skip
    lines = [line for line in error_lines(result.stderr) if line.startswith("error")]
    assert result.returncode == 1 and lines == [
        f"error: {out}: cannot write the checkpoint (no space left on the device); "
        "free some space or choose another output; any previous file is kept"
    ], result.stderr
    assert read_metadata(out)["training"]["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------------------------------------------
# --debug and SDA_DEBUG show the traceback; the exit code stays the same


@pytest.mark.parametrize("how", ["--debug", "SDA_DEBUG=1"])
def test_debug_shows_the_traceback(how: str, tmp_path: Path) -> None:
    args = ["noise", tmp_path / "absent.png", "--sigma", "0.1", "-o", tmp_path / "x.png"]
    result = sda(*args, "--debug") if how == "--debug" else sda(*args, env={"SDA_DEBUG": "1"})
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "ImageError" in result.stderr
    assert error_lines(result.stderr)[-1].startswith("error: ") and "absent.png" in result.stderr


# ----------------------------------------------------------------------------------------------------------------
# Nothing built from a checkpoint before its config is checked


def test_parameter_count_matches_the_network() -> None:
    for model in [
        {"channels": 3, "widths": [16, 32], "blocks": 1, "attention_levels": [1], "heads": 2, "groups": 8},
        {"channels": 1, "widths": [8, 16, 24], "blocks": 2, "attention_levels": [0, 2], "heads": 2, "groups": 4},
        {"channels": 3, "widths": [64, 128, 192], "blocks": 2, "attention_levels": [2]},
    ]:
        network = UNet(UNetConfig.from_dict(model))
        assert parameter_count(model) == sum(p.numel() for p in network.parameters()), model
