"""Checkpoints: safetensors files whose metadata holds the JSON config that rebuilds the model.

Two kinds of file, both safetensors (never pickle), both written atomically:

* a **model** file (what users load, small): the EMA weights of the denoiser, optionally in fp16,
  with ``metadata["sda"]`` a JSON document ``{"format": 1, "model": ..., "denoiser": ...,
  "schedule": ..., "image_size": ..., "channels": ..., "training": {...}}``;
* a **training state** file: weights, EMA, optimiser moments and random states as tensors, with
  the optimiser's hyper-parameters, step and config as JSON metadata, so that a run resumes exactly.

Metadata is parsed as JSON and validated before anything is built from it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from sda_cli.atomic import atomic_path
from sda_cli.denoiser import Denoiser, DenoiserConfig
from sda_cli.schedule import make_schedule
from sda_cli.unet import UNet, UNetConfig

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "build_denoiser",
    "complete_config",
    "load_model",
    "load_state",
    "read_metadata",
    "save_model",
    "save_state",
]

FORMAT_VERSION = 1
METADATA_KEY = "sda"
MAX_METADATA_BYTES = 1 << 20
MAX_WIDTH = 4096
MAX_LEVELS = 8
MAX_BLOCKS = 16


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line that says what to do."""


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """The ``model``, ``denoiser`` and ``schedule`` sections with every default written out."""
    return {
        **config,
        "model": UNetConfig.from_dict(config["model"]).to_dict(),
        "denoiser": DenoiserConfig.from_dict(config["denoiser"]).to_dict(),
        "schedule": make_schedule(config["schedule"]).config(),
    }


def build_denoiser(config: dict[str, Any]) -> Denoiser:
    """Build an untrained denoiser from a validated config."""
    unet = UNet(UNetConfig.from_dict(config["model"]))
    return Denoiser(unet, make_schedule(config["schedule"]), DenoiserConfig.from_dict(config["denoiser"]))


def _validate(config: Any, path: Path) -> dict[str, Any]:
    def fail(reason: str) -> CheckpointError:
        return CheckpointError(f"{path}: {reason}; use a checkpoint written by `sda train`")

    if not isinstance(config, dict):
        raise fail("metadata is not a JSON object")
    version = config.get("format")
    if not isinstance(version, int):
        raise fail("metadata has no format version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is newer than this sda reads ({FORMAT_VERSION}); upgrade sda"
        )
    for key in ("model", "denoiser", "schedule"):
        if not isinstance(config.get(key), dict):
            raise fail(f"metadata has no {key!r} section")
    model = config["model"]
    widths = model.get("widths")
    if not (isinstance(widths, list) and 1 <= len(widths) <= MAX_LEVELS):
        raise fail("model widths are missing or out of range")
    if not all(isinstance(w, int) and 1 <= w <= MAX_WIDTH for w in widths):
        raise fail("model widths are missing or out of range")
    if not (isinstance(model.get("blocks"), int) and 1 <= model["blocks"] <= MAX_BLOCKS):
        raise fail("model block count is missing or out of range")
    if model.get("channels") not in (1, 3):
        raise fail("model channels must be 1 or 3")
    for key, value in config["schedule"].items():
        if key != "name" and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise fail(f"schedule option {key!r} is not a finite number")
    try:
        _parse_sections(config)
    except (TypeError, ValueError) as error:
        raise fail(f"invalid config ({error})") from None
    return config


def _parse_sections(config: dict[str, Any]) -> None:
    """Parse every section without allocating weights (raises TypeError/ValueError)."""
    UNetConfig.from_dict(config["model"])
    DenoiserConfig.from_dict(config["denoiser"])
    make_schedule(config["schedule"])


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The validated JSON config of a model or state file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; train one with `sda train` or pass --model FILE")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from None
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise CheckpointError(f"{path}: safetensors file without sda metadata; use a checkpoint written by `sda train`")
    if len(text) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: sda metadata is larger than {MAX_METADATA_BYTES} bytes; the file is not ours")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: sda metadata is not valid JSON ({error.msg})") from None
    return _validate(config, path)


def _read_tensors(path: Path, prefix: str = "") -> dict[str, Tensor]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k[len(prefix) :]: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: tensors cannot be read ({str(error).splitlines()[0]})") from None


def _load_weights(module: torch.nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        names = (missing or unexpected)[:3]
        raise CheckpointError(
            f"{path}: weights do not match the config ({'missing' if missing else 'unexpected'} {names})"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, the config needs {tuple(expected[name].shape)}"
            )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})


def save_model(path: str | Path, denoiser: Denoiser, config: dict[str, Any], half: bool = True) -> None:
    """Write the denoiser's weights (fp16 when ``half``) and ``config`` atomically."""
    config = {"format": FORMAT_VERSION, **config}
    tensors = {
        name: (t.detach().to("cpu", torch.float16 if half and t.is_floating_point() else t.dtype)).contiguous()
        for name, t in denoiser.backbone.state_dict().items()
    }
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(config)})


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[Denoiser, dict[str, Any]]:
    """Rebuild a denoiser from a model file alone: config from the metadata, then the weights."""
    path = Path(path)
    config = read_metadata(path)
    denoiser = build_denoiser(config)
    _load_weights(denoiser.backbone, _read_tensors(path), path)
    return denoiser.to(device).eval(), config


def save_state(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Write a training state (flat tensors plus JSON metadata) atomically."""
    config = {"format": FORMAT_VERSION, **metadata}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as temporary:
        save_file(flat, str(temporary), metadata={METADATA_KEY: json.dumps(config)})


def load_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a training state written by :func:`save_state`."""
    path = Path(path)
    return _read_tensors(path), read_metadata(path)
