"""Fuzzing the readers: random and damaged files give our clean errors, never another exception or a hang.

``read_image`` must raise :class:`ImageError` (or succeed) on any bytes; ``load_model`` must raise
:class:`CheckpointError` (or succeed). Damaged files are valid ones with bytes flipped, removed, inserted or cut
off, with a bias towards the headers, where the parsing happens. A checkpoint config that passes validation must
build and run: nothing may fail after the config has been accepted.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from sda_cli.checkpoint import (
    CheckpointError,
    build_denoiser,
    check_config,
    complete_config,
    read_checkpoint,
    save_model,
)
from sda_cli.images import ImageError, read_image, write_image

FUZZ = settings(
    max_examples=150,
    deadline=None,  # no limit on the time of an example, which depends on the machine's load: time_limit catches hangs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
MICRO = {
    "model": {"channels": 3, "widths": [4, 8], "blocks": 1, "attention_levels": [1], "heads": 2, "groups": 4},
    "denoiser": {"parametrisation": "edm"},
    "schedule": {"name": "cosine"},
    "image_size": 8,
    "channels": 3,
}


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError if the block runs longer than ``seconds`` (a hang, not a slow example)."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _encoded(kind: str) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    if kind == "png":
        Image.fromarray(pixels).save(buffer, format="PNG")
    elif kind == "png-interlaced-grey":
        Image.fromarray(pixels[..., 0]).save(buffer, format="PNG", interlace=1)
    elif kind == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    elif kind == "npy":
        np.save(buffer, rng.random((12, 10, 3), dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Valid files of every kind the readers parse: PNG (8-bit, interlaced, 16-bit colour), JPEG, .npy, model."""
    folder = tmp_path_factory.mktemp("seeds")
    files = {kind: _encoded(kind) for kind in ("png", "png-interlaced-grey", "jpeg", "npy")}
    generator = torch.Generator().manual_seed(0)
    pixels, alpha = torch.rand(3, 6, 5, generator=generator), torch.rand(1, 6, 5, generator=generator)
    write_image(folder / "rgba16.png", pixels, alpha=alpha, bits=16)
    files["png16"] = (folder / "rgba16.png").read_bytes()
    torch.manual_seed(0)
    save_model(folder / "micro.safetensors", build_denoiser(MICRO), complete_config(MICRO))
    files["model"] = (folder / "micro.safetensors").read_bytes()
    return files


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with 1 to 4 edits (flip, delete, insert, truncate), positions mostly within the first 128 bytes."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        position = draw(st.one_of(st.integers(0, min(127, len(data) - 1)), st.integers(0, len(data) - 1)))
        edit = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "set"]))
        if edit == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif edit == "set":
            data[position] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif edit == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        elif edit == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[position:]
    return bytes(data)


def read_image_or_clean_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with time_limit(10):
        try:
            image = read_image(path)
        except ImageError as error:
            assert "\n" not in str(error) and str(error).startswith(str(path))
            return
    assert image.pixels.ndim == 3 and image.pixels.shape[0] in (1, 3)


def load_model_or_clean_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with time_limit(20):
        try:
            denoiser, _ = read_checkpoint(path)
        except CheckpointError as error:
            assert "\n" not in str(error)
            return
        with torch.no_grad():
            assert denoiser(torch.zeros(1, 3, 8, 8), 0.5).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".npy", ""])
@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_are_not_images(tmp_path: Path, suffix: str, data: bytes) -> None:
    read_image_or_clean_error(tmp_path / f"random{suffix}", data)


@pytest.mark.parametrize("kind", ["png", "png-interlaced-grey", "png16", "jpeg", "npy"])
@FUZZ
@given(data=st.data())
def test_damaged_images_give_image_errors(tmp_path: Path, seeds: dict[str, bytes], kind: str, data) -> None:
    suffix = {"jpeg": ".jpg", "npy": ".npy"}.get(kind, ".png")
    read_image_or_clean_error(tmp_path / f"damaged{suffix}", data.draw(damaged(seeds[kind])))


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_are_not_checkpoints(tmp_path: Path, data: bytes) -> None:
    load_model_or_clean_error(tmp_path / "random.safetensors", data)


@FUZZ
@given(data=st.data())
def test_damaged_checkpoints_give_checkpoint_errors(tmp_path: Path, seeds: dict[str, bytes], data) -> None:
    load_model_or_clean_error(tmp_path / "damaged.safetensors", data.draw(damaged(seeds["model"])))


JUNK = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=4), st.lists(st.integers(-2, 9), max_size=3)
)
SMALL = st.one_of(st.integers(-2, 9), JUNK)
FIELDS = {
    ("format",): SMALL,
    ("model",): JUNK,
    ("model", "channels"): SMALL,
    ("model", "widths"): st.one_of(st.lists(st.one_of(st.integers(-1, 12), JUNK), max_size=4), JUNK),
    ("model", "blocks"): SMALL,
    ("model", "attention_levels"): st.one_of(st.lists(st.integers(-1, 9), max_size=3), JUNK),
    ("model", "heads"): SMALL,
    ("model", "groups"): SMALL,
    ("model", "dropout"): st.one_of(st.floats(-1, 2), JUNK),
    ("model", "extra"): SMALL,
    ("denoiser",): JUNK,
    ("denoiser", "parametrisation"): st.one_of(st.sampled_from(["edm", "v", "eps", "x"]), JUNK),
    ("denoiser", "p_std"): SMALL,
    ("schedule",): JUNK,
    ("schedule", "name"): st.one_of(st.sampled_from(["cosine", "ve", "linear", "nope"]), JUNK),
    ("schedule", "eta"): SMALL,
    ("image_size",): SMALL,
    ("channels",): SMALL,
    ("training",): JUNK,
}


@st.composite
def configs(draw: st.DrawFn) -> Any:
    """A valid checkpoint config (small widths) with one to three fields set to nearby or nonsensical values."""
    config = json.loads(json.dumps(MICRO)) | {"format": 1}
    config["model"]["widths"] = draw(st.lists(st.sampled_from([2, 4, 6, 8, 12]), min_size=1, max_size=3))
    for path in draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3, unique=True)):
        *parents, key = path
        target = config
        for parent in parents:
            target = target.get(parent) if isinstance(target, dict) else None
        if isinstance(target, dict):
            if draw(st.integers(0, 4)) == 0:
                target.pop(key, None)
            else:
                target[key] = draw(FIELDS[path])
    return json.loads(json.dumps(config))  # as read from a file: tuples become lists, NaN survives


ACCEPTED_AT_LEAST = 20
"""Of the 150 configs drawn, those that ``check_config`` must accept at least (measured: 37 accepted, 113 refused)."""


def test_an_accepted_config_builds_and_runs() -> None:
    """Every config that ``check_config`` accepts builds and runs, and every one it refuses gets a one-line message;
    and enough of the drawn configs are accepted (at least ACCEPTED_AT_LEAST of 150) for the first half to mean
    something: a strategy that only ever produced refused configs, or a ``check_config`` that refused everything,
    would otherwise pass here with nothing built."""
    outcomes = {"accepted": 0, "refused": 0}

    @FUZZ
    @given(config=configs())
    def builds_and_runs(config: Any) -> None:
        try:
            check_config(config)
        except CheckpointError as error:
            assert "\n" not in str(error)
            outcomes["refused"] += 1
            return
        denoiser = build_denoiser(config)
        channels = config["model"]["channels"]
        with torch.no_grad():
            assert denoiser(torch.zeros(1, channels, 8, 8), 0.5).shape == (1, channels, 8, 8)
        outcomes["accepted"] += 1

    builds_and_runs()
    assert outcomes["accepted"] >= ACCEPTED_AT_LEAST, outcomes
