"""Checkpoints: safetensors files whose metadata holds the JSON config that rebuilds the model.

Two kinds of file, both safetensors (never pickle), both written atomically:

* a **model** file (what users load, small): the EMA weights of the denoiser, optionally in fp16,
  with ``metadata["sda"]`` a JSON document ``{"format": 1, "model": ..., "denoiser": ...,
  "schedule": ..., "image_size": ..., "channels": ..., "training": {...}}``;
* a **training state** file: weights, EMA, optimiser moments and random states as tensors, with
  the optimiser's hyper-parameters, step and config as JSON metadata, so that a run resumes exactly.

Metadata is parsed as JSON and validated before anything is built from it: types and ranges of every
model option, and the U-Net's parameter count, computed from the config alone (:func:`parameter_count`),
so that a hostile or damaged file cannot make us allocate a huge model. The same limits, defined once, check a new
model's config built from ``sda train``'s options (:func:`model_config`), with messages that name the options.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from sda_cli.atomic import atomic_path, write_failure
from sda_cli.denoiser import PARAMETRISATIONS, Denoiser, DenoiserConfig
from sda_cli.schedule import make_schedule
from sda_cli.unet import NORMS, UNet, UNetConfig

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "ModelChoiceError",
    "build_denoiser",
    "check_config",
    "complete_config",
    "file_version",
    "load_state",
    "model_config",
    "parameter_count",
    "read_checkpoint",
    "read_metadata",
    "save_model",
    "save_state",
    "update_config",
]

FORMAT_VERSION = 1
METADATA_KEY = "sda"
MAX_METADATA_BYTES = 1 << 20
MAX_WIDTH = 4096
MAX_LEVELS = 8
MAX_BLOCKS = 16
MAX_HEADS = 64
MAX_PATCH = 16
MIN_NOISE_STD = 0.01
MAX_IMAGE_SIZE = 1 << 14
MAX_PARAMETERS = 500_000_000
"""Largest U-Net that a config may describe (2 GB of fp32 weights); checked before anything is built."""
READ_ATTEMPTS = 5
"""Reads of a file that is being replaced meanwhile (a training run saving), before giving up."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line that says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split("\n")).replace("\r", " "))


class ModelChoiceError(CheckpointError):
    """A ``--model`` that names no model sda can use: a missing path or Hub id, a folder that is not a DDPM (a usage
    error, exit code 2, unlike a damaged file)."""


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """The ``model``, ``denoiser`` and ``schedule`` sections with every default written out."""
    return {
        **config,
        "model": UNetConfig.from_dict(config["model"]).to_dict(),
        "denoiser": DenoiserConfig.from_dict(config["denoiser"]).to_dict(),
        "schedule": make_schedule(config["schedule"]).config(),
    }


def parameter_count(model: dict[str, Any]) -> int:
    """The number of parameters of the U-Net that a ``model`` config section describes, without allocating it.

    The network is built on the ``meta`` device, where tensors have shapes but no storage.
    """
    with torch.device("meta"):
        unet = UNet(UNetConfig.from_dict(model))
    return sum(p.numel() for p in unet.parameters())


def build_denoiser(config: dict[str, Any], precision: torch.dtype | None = None) -> Denoiser:
    """Build an untrained denoiser from a config, its network evaluated under autocast to ``precision`` (``None``:
    float32, or the caller's context); refuses a U-Net of more than :data:`MAX_PARAMETERS`."""
    count = parameter_count(config["model"])
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{_too_large(count)}; use smaller widths or fewer blocks")
    unet = UNet(UNetConfig.from_dict(config["model"]), precision=precision)
    denoiser_config = DenoiserConfig.from_dict(config["denoiser"])
    inflation = tuple((float(s), float(f)) for s, f in config.get("calibration", {}).get("inflation", []))
    size = int(config.get("image_size", 32))
    return Denoiser(unet, make_schedule(config["schedule"]), denoiser_config, size, inflation)


def _too_large(count: int) -> str:
    return f"the config describes a U-Net of {count:,} parameters, more than the limit of {MAX_PARAMETERS:,}"


def check_config(config: Any) -> dict[str, Any]:
    """Validate a checkpoint config (parsed JSON) before anything is built from it; return it unchanged.

    Checks types and ranges of every model option and the parameter count (:func:`parameter_count`), and that
    every section parses. Raises :class:`CheckpointError` with the reason (no path, no advice).
    """
    _check_sections(config)
    _check_model(config["model"], options=False)
    _check_denoiser(config["denoiser"], options=False)
    _check_extras(config)
    _check_network(config, options=False)
    return config


def model_config(
    *,
    channels: int = 3,
    widths: Sequence[int] = (64, 128, 192),
    blocks: int | Sequence[int] = 2,
    attention_levels: Sequence[int] = (2,),
    patch: int = 1,
    norm: str = "group",
    parametrisation: str = "edm",
    noise_mean: float = -1.2,
    noise_std: float = 1.2,
    image_size: int = 32,
    crop: int | None = None,
) -> dict[str, Any]:
    """The ``model``, ``denoiser`` and ``schedule`` sections of a new model, from ``sda train``'s options, checked.

    The limits are those of :func:`check_config`, defined once for both, plus two of training alone: the side of the
    training images (``crop``, else ``image_size``) is a multiple of the network's downsampling factor
    :math:`p \\cdot 2^{L-1}` (``patch`` :math:`p`, :math:`L` levels), and the log-normal law of the noise levels has a
    finite mean and a standard deviation of at least :data:`MIN_NOISE_STD`. ``blocks`` is one count for every level,
    or one per level. Raises :class:`CheckpointError` (a ``ValueError``) whose one line names the option and says
    what to do, such as "--widths needs 1 to 8 widths between 1 and 4096, such as 64,128,192".
    """
    counts = [blocks] if isinstance(blocks, int) else list(blocks)
    model = {
        "channels": channels,
        "widths": list(widths),
        "blocks": counts[0] if len(counts) == 1 else counts,
        "attention_levels": list(attention_levels),
        "patch": patch,
        "norm": norm,
    }
    denoiser = {"parametrisation": parametrisation, "p_mean": noise_mean, "p_std": noise_std}
    _check_model(model, options=True)
    _check_denoiser(denoiser, options=True)
    _need(math.isfinite(noise_mean), f"--noise-mean must be a finite number such as -1.2, not {noise_mean}")
    ok = MIN_NOISE_STD <= noise_std < math.inf
    _need(ok, f"--noise-std must be a number of at least {MIN_NOISE_STD} such as 1.2, not {noise_std}")
    side_name, side = ("--crop", crop) if crop is not None else ("--image-size", image_size)
    _need(
        _is_int(side) and 1 <= side <= MAX_IMAGE_SIZE, f"{side_name} must be a whole number from 1 to {MAX_IMAGE_SIZE}"
    )
    factor = UNetConfig.from_dict(model).factor
    _need(
        side % factor == 0, f"{side_name} must be a multiple of {factor} for {len(widths)} levels and --patch {patch}"
    )
    config = {"model": model, "denoiser": denoiser, "schedule": {"name": "cosine"}}
    _check_network(config, options=True)
    return config


def _need(ok: bool, message: str, option_message: str | None = None, *, options: bool = False) -> None:
    """Raise :class:`CheckpointError` unless ``ok``, with ``message`` (the reason, for a checkpoint's config), or with
    ``option_message`` when the config comes from ``sda train``'s ``options`` (it names the option, says what to do)."""
    if not ok:
        raise CheckpointError(option_message if options and option_message is not None else message)


def _either(names: Sequence[str]) -> str:
    """``a, b or c``."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def _check_sections(config: Any) -> None:
    """A JSON object with a format version this sda reads, and ``model``, ``denoiser`` and ``schedule`` objects."""
    _need(isinstance(config, dict), "metadata is not a JSON object")
    version = config.get("format")
    _need(_is_int(version) and version >= 1, "metadata has no format version")
    _need(version <= FORMAT_VERSION, f"checkpoint format {version} is newer than this sda reads ({FORMAT_VERSION})")
    for key in ("model", "denoiser", "schedule"):
        _need(isinstance(config.get(key), dict), f"metadata has no {key!r} section")


def _check_model(model: dict[str, Any], options: bool) -> None:
    """The limits of the U-Net's options, each defined once, with its message for a file and for ``sda train``."""
    need = functools.partial(_need, options=options)
    channels = model.get("channels")
    need(_is_int(channels) and channels in (1, 3), "model channels must be 1 or 3", "--channels must be 1 or 3")
    widths = model.get("widths")
    example = f"--widths needs 1 to {MAX_LEVELS} widths between 1 and {MAX_WIDTH}, such as 64,128,192"
    ok = isinstance(widths, list) and 1 <= len(widths) <= MAX_LEVELS
    need(ok, f"model widths are missing or not 1 to {MAX_LEVELS} levels", example)
    ok = all(_is_int(w) and 1 <= w <= MAX_WIDTH for w in widths)
    need(ok, f"model widths must be whole numbers from 1 to {MAX_WIDTH}", example)
    first = widths[0]  # the noise embedding has widths[0] features, half sines and half cosines
    need(
        first % 2 == 0,
        f"the first model width must be even, not {first}",
        f"--widths must begin with an even width, not {first}, such as 64,128,192",
    )
    blocks = model.get("blocks")
    counts = blocks if isinstance(blocks, list) and len(blocks) == len(widths) else [blocks]
    need(
        all(_is_int(n) and 1 <= n <= MAX_BLOCKS for n in counts),
        f"model block count is missing or not 1 to {MAX_BLOCKS} (one, or one per level)",
        f"--blocks needs one count, or one per level ({len(widths)}), each from 1 to {MAX_BLOCKS}",
    )
    levels = model.get("attention_levels", [])
    need(
        isinstance(levels, list) and all(_is_int(level) and 0 <= level < MAX_LEVELS for level in levels),
        f"model attention levels must be whole numbers from 0 to {MAX_LEVELS - 1}",
        f"--attention takes levels from 0 to {MAX_LEVELS - 1} (0 is the stem's resolution), or none",
    )
    for key, limit in (("heads", MAX_HEADS), ("groups", MAX_WIDTH)):  # no options of `sda train`
        ok = key not in model or (_is_int(model[key]) and 1 <= model[key] <= limit)
        need(ok, f"model {key} must be a whole number from 1 to {limit}")
    ok = "patch" not in model or (_is_int(model["patch"]) and 1 <= model["patch"] <= MAX_PATCH)
    need(ok, f"model patch must be a whole number from 1 to {MAX_PATCH}", f"--patch must be from 1 to {MAX_PATCH}")
    need(
        model.get("norm", "group") in NORMS, f"model norm must be {_either(NORMS)}", f"--norm must be {_either(NORMS)}"
    )
    dropout = model.get("dropout", 0.0)
    need(isinstance(dropout, (int, float)) and 0 <= dropout < 1, "model dropout must be a number in [0, 1)")


def _check_denoiser(denoiser: dict[str, Any], options: bool) -> None:
    """The parametrisation is one of :data:`~sda_cli.denoiser.PARAMETRISATIONS`."""
    ok = denoiser.get("parametrisation", "edm") in PARAMETRISATIONS
    names = ", ".join(PARAMETRISATIONS)
    _need(
        ok,
        f"denoiser parametrisation must be one of {names}",
        f"--parametrisation must be one of {names}",
        options=options,
    )


def _check_extras(config: dict[str, Any]) -> None:
    """The schedule's numbers, the image size and channels, the training section and the calibration table."""
    for key, value in config["schedule"].items():
        _need(
            key == "name" or (isinstance(value, (int, float)) and math.isfinite(value)),
            f"schedule option {key!r} is not a finite number",
        )
    for key, limit in (("image_size", MAX_IMAGE_SIZE), ("channels", 3)):
        _need(
            key not in config or (_is_int(config[key]) and 1 <= config[key] <= limit),
            f"{key} must be a whole number from 1 to {limit}",
        )
    _need(isinstance(config.get("training", {}), dict), "the 'training' section is not a JSON object")
    calibration = config.get("calibration", {})
    table = calibration.get("inflation", []) if isinstance(calibration, dict) else None
    _need(
        isinstance(table, list) and all(_is_pair(pair) for pair in table),
        "the calibration's inflation must be a list of [sigma, factor] pairs of positive numbers",
    )


def _is_pair(pair: Any) -> bool:
    """A ``[sigma, factor]`` pair of the inflation table: two positive finite numbers."""
    return (
        isinstance(pair, list)
        and len(pair) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in pair)
        and pair[0] > 0
        and pair[1] > 0
    )


def _check_network(config: dict[str, Any], options: bool) -> None:
    """Every section parses, the attention heads divide the widths that have attention, and the U-Net has at most
    :data:`MAX_PARAMETERS` parameters (counted without allocating it)."""
    try:
        unet = UNetConfig.from_dict(config["model"])
        DenoiserConfig.from_dict(config["denoiser"])
        make_schedule(config["schedule"])
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointError(f"invalid config ({type(error).__name__}: {error})") from None
    attended = sorted({unet.widths[level] for level in unet.attention_levels if level < len(unet.widths)})
    _need(
        all(width % unet.heads == 0 for width in attended),
        f"model heads ({unet.heads}) do not divide the widths {attended} with attention",
        f"the widths {attended} of the levels with attention must be multiples of {unet.heads} (the attention heads); "
        "change --widths or --attention",
        options=options,
    )
    count = parameter_count(config["model"])
    _need(
        count <= MAX_PARAMETERS,
        _too_large(count),
        f"{_too_large(count)}; change --widths, --blocks or --attention",
        options=options,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def file_version(path: Path) -> tuple[int, int, int] | None:
    """Inode, size and modification time: which version of ``path`` is in place, or None if there is none."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def _read(path: Path, with_tensors: bool) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The validated config and, when ``with_tensors``, the tensors of one version of ``path``.

    safetensors opens a file twice: once for its header, then by name again for torch's memory map. A
    checkpoint renamed into place between the two (``sda train`` saving while another process loads)
    fails on the size or mixes two files, so a read during which the file was replaced is repeated.
    """
    for _ in range(READ_ATTEMPTS):
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint; train one with `sda train` or pass --model FILE")
        before = file_version(path)
        try:
            with safe_open(str(path), framework="pt") as handle:
                config = _parse_metadata(path, handle.metadata() or {})
                tensors = {name: handle.get_tensor(name) for name in handle.keys()} if with_tensors else {}
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:  # CheckpointError is a ValueError
            if file_version(path) != before:
                continue
            if isinstance(error, CheckpointError):
                raise
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from None
        if file_version(path) == before:
            return config, tensors
    raise CheckpointError(f"{path}: the file was replaced {READ_ATTEMPTS} times while being read; try again")


def _parse_metadata(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The sda config in a file's metadata, validated by :func:`check_config`."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise CheckpointError(f"{path}: safetensors file without sda metadata; use a checkpoint written by `sda train`")
    if len(text) > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: sda metadata is larger than {MAX_METADATA_BYTES} bytes; the file is not ours")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: sda metadata is not valid JSON ({error.msg})") from None
    except (ValueError, RecursionError) as error:  # e.g. integers of thousands of digits, or deep nesting
        raise CheckpointError(f"{path}: sda metadata cannot be parsed ({type(error).__name__})") from None
    if isinstance(config, dict) and _is_int(config.get("format")) and config["format"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {config['format']} is newer than this sda reads ({FORMAT_VERSION}); upgrade sda"
        )
    try:
        return check_config(config)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}; use a checkpoint written by `sda train`") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The validated JSON config of a model or state file."""
    return _read(Path(path), with_tensors=False)[0]


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
    _write(path, tensors, config)


def _write(path: str | Path, tensors: dict[str, Tensor], config: dict[str, Any]) -> None:
    """Write tensors and the JSON config atomically; a failure leaves any existing file as it was."""
    try:
        with atomic_path(path) as temporary:
            mode = temporary.stat().st_mode  # safetensors makes its files owner-only: keep the usual mode
            save_file(tensors, str(temporary), metadata={METADATA_KEY: json.dumps(config)})
            os.chmod(temporary, mode)
    except (OSError, SafetensorError) as error:
        reason, advice = write_failure(error)
        raise CheckpointError(f"{path}: cannot write the checkpoint ({reason}); {advice}") from None


def read_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", precision: torch.dtype | None = None
) -> tuple[Denoiser, dict[str, Any]]:
    """Rebuild a denoiser and its config from a model file alone: config from the metadata, then the weights;
    channels-last, in eval mode, its network evaluated under autocast to ``precision`` (``None``: float32). What users
    call is :func:`sda_cli.models.load_model` (a shipped name or a path, a device name, a precision name)."""
    path = Path(path)
    config, tensors = _read(path, with_tensors=True)
    denoiser = build_denoiser(config, precision)
    _load_weights(denoiser.backbone, tensors, path)
    denoiser.backbone.to(memory_format=torch.channels_last)
    return denoiser.to(device).eval(), config


def update_config(path: str | Path, section: str, value: Any) -> None:
    """Set one top-level section of a model file's config, keeping its weights; written atomically."""
    path = Path(path)
    config, tensors = _read(path, with_tensors=True)
    config = {**config, section: value}
    check_config(config)
    _write(path, tensors, config)


def save_state(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Write a training state (flat tensors plus JSON metadata) atomically."""
    config = {"format": FORMAT_VERSION, **metadata}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _write(path, flat, config)


def load_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a training state written by :func:`save_state`."""
    path = Path(path)
    metadata, tensors = _read(path, with_tensors=True)
    step = metadata.get("step")
    if not (_is_int(step) and step >= 0 and isinstance(metadata.get("optimizer"), list)):
        raise CheckpointError(
            f"{path}: not a training state (no step or optimiser settings); resume from the model file instead "
            "by moving this file away"
        )
    return tensors, metadata
