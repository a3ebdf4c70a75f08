"""Shared fixtures: a tiny trained model and a folder of generated images, built once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sda_cli.data import image_folder
from sda_cli.train import TrainConfig, train

# The closed-form tests make thousands of small tensor operations: one thread is fastest for them, and
# on a loaded machine intra-op threads waiting for each other make them many times slower.
torch.set_num_threads(1)

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
