"""The shipped models by name, and loading a model for inference: what ``--model`` and ``sda_cli.load_model`` take.

A model is a safetensors file whose metadata holds the JSON config that rebuilds it (:mod:`sda_cli.checkpoint`), or a
pretrained diffusers DDPM: a pipeline folder, a ``UNet2DModel`` folder with its scheduler config, or a Hub id found in
the local Hugging Face cache (:mod:`sda_cli.diffusers`, imported only then). The shipped ones live in
``checkpoints/`` and are named by their file's stem.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sda_cli.checkpoint import CheckpointError, ModelChoiceError, read_checkpoint
from sda_cli.denoiser import Denoiser, autocast_dtype
from sda_cli.diffusers import HUB_ID, from_hub_cache, load_diffusers

__all__ = [
    "CHECKPOINTS",
    "SHIPPED",
    "flops_per_pixel",
    "load_model",
    "pick_device",
    "resolve_model",
]


def _shipped_folder() -> Path:
    """The folder of the shipped models: ``sda_cli/checkpoints/`` in an installed wheel (pyproject.toml maps the
    repository's ``checkpoints/`` there), else the source tree's ``checkpoints/``: an editable install (setuptools'
    editable finder does not serve that mapped folder) or a checkout, whose ``sda_cli/`` has no such folder."""
    package = Path(__file__).resolve().parent
    installed = package / "checkpoints"
    return installed if installed.is_dir() else package.parent / "checkpoints"


CHECKPOINTS = _shipped_folder()
"""Where the shipped models are, whatever the working directory: see :func:`_shipped_folder`."""

SHIPPED: dict[str, str] = {
    "photo": "natural colour photos (BSDS500 and CIFAR-10 mosaics), for large images: the default of sda denoise",
    "cifar10": "CIFAR-10 32×32 thumbnails: the default of sda sample and sda restore",
}
"""The shipped models: name → what it was trained on and what it is for."""


def resolve_model(model: str | Path | None, default: str = "cifar10") -> Path:
    """Where ``model`` is: a shipped name's file, a path (a file, or a diffusers folder), or a Hub id's folder in the
    local Hugging Face cache; ``None`` for ``default``."""
    name = default if model is None else str(model)
    if name in SHIPPED:
        path = CHECKPOINTS / f"{name}.safetensors"
        if not path.is_file():
            raise CheckpointError(f"the shipped model {name!r} is missing ({path}); reinstall sda or pass --model FILE")
        return path
    path = Path(name)
    if path.exists():
        return path
    if not HUB_ID.fullmatch(name):
        names = ", ".join(SHIPPED)
        raise ModelChoiceError(
            f"no model at {path}; pass a shipped model ({names}), a .safetensors file or a diffusers model folder"
        )
    return from_hub_cache(name)


def flops_per_pixel(model: dict[str, object], side: int) -> float:
    """Forward FLOPs per pixel of the U-Net a ``model`` config describes, on a ``side × side`` image (a multiply-add
    counts 2), counted by ``torch.utils.flop_counter`` on the meta device: nothing is allocated."""
    from torch.utils.flop_counter import FlopCounterMode

    from sda_cli.unet import UNet, UNetConfig

    config = UNetConfig.from_dict(dict(model))
    with torch.device("meta"):
        network = UNet(config)
        image, noise = torch.empty(1, config.channels, side, side), torch.empty(1)
        with FlopCounterMode(display=False) as counter:
            network(image, noise)
    return counter.get_total_flops() / side**2


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA device is available; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def load_model(
    model: str | Path | None = None, *, device: str | torch.device = "auto", precision: str = "auto"
) -> Denoiser:
    """A model ready for inference: a shipped name (``cifar10``), a path (a ``.safetensors`` file or a diffusers folder)
    or a Hub id in the local cache, on ``device``, its network run at ``precision`` (``auto``: bf16 where the hardware
    computes it natively, float32 elsewhere; ``bf16``, ``fp16``, ``fp32``)."""
    torch_device = pick_device(device)
    dtype = autocast_dtype(precision, torch_device)
    path = resolve_model(model)
    if path.is_dir():
        return load_diffusers(path, torch_device, dtype)
    denoiser, _ = read_checkpoint(path, torch_device, dtype)
    return denoiser
