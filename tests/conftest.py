"""Shared fixtures: a tiny trained model and a folder of generated images, built once per session; the command line
run in this process; the Hypothesis profile of the suite."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from PIL import Image

from sda_cli.data import image_folder
from sda_cli.train import TrainConfig, train

# The closed-form tests make thousands of small tensor operations: one thread is fastest for them, and
# on a loaded machine intra-op threads waiting for each other make them many times slower.
torch.set_num_threads(1)

# Hypothesis draws the same examples on every run (a fixed seed per test): a failure repeats when rerun, and no
# run fails by chance. The examples still come from the strategies, not from a hand-picked list.
settings.register_profile("sda", derandomize=True, database=None)
settings.load_profile("sda")

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
TINY_MODEL = {
    "model": {"channels": 3, "widths": [16, 32], "blocks": 1, "attention_levels": [1], "heads": 2, "groups": 8},
    "denoiser": {"parametrisation": "edm"},
    "schedule": {"name": "cosine"},
}


def make_images(folder: Path, count: int = 24, size: int = 16, seed: int = 0) -> Path:
    """Smooth random colour images (low-frequency patterns), written as 8-bit PNGs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.linspace(0, 1, size)
    for i in range(count):
        fx, fy, phase = rng.uniform(0.5, 2.0, 3), rng.uniform(0.5, 2.0, 3), rng.uniform(0, 6.3, 3)
        image = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * grid[:, None, None] + fy * grid[None, :, None]) + phase)
        Image.fromarray(np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    return folder


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, image_dir: Path) -> Path:
    """A tiny U-Net trained for a few steps on the generated images: enough to run every command."""
    out = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    config = TrainConfig(steps=20, batch_size=8, lr=1e-3, warmup=5, checkpoint_every=10, seed=0)
    train(TINY_MODEL, config, image_folder(image_dir, 16), out, device=torch.device("cpu"))
    return out


@pytest.fixture(scope="session")
def shared_cifar() -> Path:
    if not (SHARED_CIFAR / "cifar-10-batches-py").is_dir():
        pytest.skip(f"the local CIFAR-10 copy is absent ({SHARED_CIFAR}); these tests need ../shared beside the repo")
    return SHARED_CIFAR


@dataclass(frozen=True)
class Run:
    """What a command-line run left: its exit code and what it wrote to stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


# The warnings Python does not show by default: a user would not see them either.
_HIDDEN_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_sda(*args: str | Path, env: dict[str, str] | None = None) -> Run:
    """``sda ARGS`` in this process, through ``sda_cli.cli.main`` as the ``sda`` script calls it, so the one-line
    messages and exit codes are those a user gets; without the second or two of a new Python importing torch.

    ``SDA_DEBUG`` is unset and ``SDA_NO_DOWNLOAD=1`` is set (nothing is downloaded), then ``env`` is applied;
    ``sys.argv`` and the environment are restored afterwards. Warnings that Python would print are appended to
    stderr, as a user would see them.
    """
    from sda_cli.cli import main

    environment: dict[str, str | None] = {"SDA_DEBUG": None, "SDA_NO_DOWNLOAD": "1", **(env or {})}
    saved_environment = {name: os.environ.get(name) for name in environment}
    saved_argv = sys.argv
    stdout, stderr = io.StringIO(), io.StringIO()
    code: int = 0
    try:
        _set_environment(environment)
        sys.argv = ["sda", *map(str, args)]
        with contextlib.ExitStack() as stack:
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            stack.enter_context(contextlib.redirect_stdout(stdout))
            stack.enter_context(contextlib.redirect_stderr(stderr))
            try:
                main()
            except SystemExit as exit_info:
                code = exit_info.code if isinstance(exit_info.code, int) else int(exit_info.code is not None)
    finally:
        sys.argv = saved_argv
        _set_environment(saved_environment)
    shown = {
        (str(w.message), w.category, w.filename, w.lineno): w
        for w in caught
        if not issubclass(w.category, _HIDDEN_WARNINGS)
    }
    for w in shown.values():  # once per place, as Python's default filter shows them
        stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line))
    return Run(code, stdout.getvalue(), stderr.getvalue())


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
