r"""A pretrained diffusers DDPM (a ``UNet2DModel`` and its scheduler config) as a backbone.

A DDPM (Ho et al., 2020) is trained on :math:`x_k = \sqrt{\bar\alpha_k}\, x + \sqrt{1 - \bar\alpha_k}\, \varepsilon`,
:math:`k = 0, \dots, T - 1`, and predicts :math:`\varepsilon` (``epsilon``), :math:`v = \sqrt{\bar\alpha_k}
\varepsilon - \sqrt{1 - \bar\alpha_k}\, x` (``v_prediction``; Salimans & Ho, 2022) or :math:`x` (``sample``) from
:math:`(x_k, k)`. Our denoiser in its ``eps`` parametrisation feeds the network
:math:`c_\text{in} z = z / \sqrt{1 + \rho^2}` with :math:`z = x + \rho \varepsilon`, which is :math:`x_k` exactly
when :math:`\rho = \rho_k = \sqrt{(1 - \bar\alpha_k) / \bar\alpha_k}`. So the DDPM is one more backbone:

* the noise ratio maps to a fractional step :math:`\kappa` by interpolating :math:`\log \rho_k` linearly
  (:class:`sda_cli.schedule.DiscreteSchedule`, as Karras et al., 2022, and k-diffusion wrap DDPMs), clamped to
  :math:`[0, T - 1]`; the network sees :math:`(x_\kappa, \kappa)`;
* its prediction type is one of our parametrisations (:mod:`sda_cli.denoiser`), with no arithmetic of its own:
  ``epsilon`` is ``eps`` (:math:`\hat{x} = z - \rho \hat\varepsilon`); ``v_prediction`` is ``v`` with
  :math:`F = -\hat v` (:math:`\hat{x} = \alpha^2 z - \sigma \hat v = \alpha x_\kappa - \sigma \hat v` with
  :math:`\alpha = 1 / \sqrt{1 + \rho^2}`, :math:`\sigma = \rho \alpha`); ``sample`` is ``x``
  (:math:`\hat{x} = F`). A learned variance (twice the channels) keeps the mean half.
* :math:`\hat{x}` is then, at every one of the model's own steps, the scheduler's ``pred_original_sample``
  (unclipped). Pixels are in :math:`[-1, 1]`, as ours.

The schedule of the model is its own (:class:`~sda_cli.schedule.DiscreteSchedule` of :math:`\bar\alpha_k`), so
:math:`t = k / (T - 1)` is step :math:`k` and the samplers run on it unchanged.

**Size.** A ``UNet2DModel`` is a global network trained at ``sample_size``: larger images are tiled at that size
(:mod:`sda_cli.tiles`), and an image smaller than it is padded by reflection to it (and to a multiple of the
network's downsampling factor), then cropped back. Padding rather than running at the smaller size: group norm and
attention see the statistics of an image of the training size, and reflection keeps the padded border image-like.
Below a third of ``sample_size`` per side a centred reflection cannot reach it, and the image is refused.

**Safety.** Weights load from ``diffusion_pytorch_model.safetensors`` only; a folder that holds only the pickle
``diffusion_pytorch_model.bin`` is refused with the command that converts it. diffusers is imported only here, and
this module only when a diffusers model is asked for.

References:
    Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
    Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", ICLR 2022 (v-prediction).
    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022.
    von Platen et al., "Diffusers: State-of-the-art diffusion models", GitHub, 2022.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sda_cli.checkpoint import ModelChoiceError
from sda_cli.denoiser import Denoiser, DenoiserConfig
from sda_cli.schedule import DiscreteSchedule

__all__ = [
    "BETA_SCHEDULES",
    "HUB_ID",
    "PARAMETRISATION",
    "PREDICTION_TYPES",
    "DiffusersBackbone",
    "DiffusersConfig",
    "DiffusersFolder",
    "alphas_cumprod",
    "describe",
    "find_folder",
    "from_hub_cache",
    "load_diffusers",
]

PARAMETRISATION = {"epsilon": "eps", "v_prediction": "v", "sample": "x"}
"""Our parametrisation (:mod:`sda_cli.denoiser`) of each diffusers prediction type."""
PREDICTION_TYPES = tuple(PARAMETRISATION)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(?<!\.safetensors)")
"""A Hugging Face Hub model id, ``owner/name``."""
WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS = "diffusion_pytorch_model.bin"
INSTALL = "pip install 'sda-cli[diffusers]'"
_VARIANCE_EXPLODING = ("ScoreSdeVeScheduler", "KarrasVeScheduler")


@dataclass(frozen=True)
class DiffusersConfig:
    """What the rest of sda reads of a backbone (``channels``) and what tiling needs (``sample_size``, ``factor``)."""

    channels: int
    sample_size: int
    factor: int
    """The network's downsampling factor: its input sides must be multiples of it."""
    prediction_type: str
    learned_variance: bool


def _betas(scheduler: dict[str, Any]) -> Tensor:
    """The betas as diffusers' schedulers build them (float32), from a scheduler config."""
    steps = int(scheduler.get("num_train_timesteps", 1000))
    if scheduler.get("trained_betas") is not None:
        return torch.tensor(scheduler["trained_betas"], dtype=torch.float32)
    kind = scheduler.get("beta_schedule", "linear")
    start, end = float(scheduler.get("beta_start", 1e-4)), float(scheduler.get("beta_end", 0.02))
    if kind == "linear":
        return torch.linspace(start, end, steps, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float32) ** 2
    if kind == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, steps)) * (end - start) + start
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal (2021): alpha_bar(t) = cos((t + s) / (1 + s) pi / 2)^2

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
        return torch.tensor(betas, dtype=torch.float32)
    raise ModelChoiceError(f"beta_schedule {kind!r} is not supported; sda reads {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod(scheduler: dict[str, Any]) -> Tensor:
    r""":math:`\bar\alpha_k = \prod_{j \leq k} (1 - \beta_j)`, computed as diffusers does (float32), as float64."""
    return torch.cumprod(1.0 - _betas(scheduler), dim=0).double()


class DiffusersBackbone(nn.Module):
    r"""A ``UNet2DModel`` as :math:`F(c_\text{in} z, c_\text{noise})` in the parametrisation of its prediction type
    (:data:`PARAMETRISATION`; module docstring)."""

    def __init__(
        self, unet: nn.Module, schedule: DiscreteSchedule, config: DiffusersConfig, precision: torch.dtype | None
    ) -> None:
        super().__init__()
        self.unet = unet
        self.schedule = schedule
        self.config = config
        self.precision = precision
        """The autocast dtype of the network (``None``: float32), read by :class:`sda_cli.denoiser.Denoiser`."""

    def _padded(self, x: Tensor) -> tuple[Tensor, int, int]:
        height, width = x.shape[-2:]
        size, factor = self.config.sample_size, self.config.factor
        target_h, target_w = (-(-max(side, size) // factor) * factor for side in (height, width))
        top, left = (target_h - height) // 2, (target_w - width) // 2
        bottom, right = target_h - height - top, target_w - width - left
        if max(top, bottom) >= height or max(left, right) >= width:
            least = size // 3 + 1
            raise ValueError(
                f"the image is {height}×{width} pixels; this model, trained at {size}×{size}, pads smaller images by "
                f"reflection and needs at least {least} pixels per side: use a larger image or another model"
            )
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), mode="reflect")
        return x, top, left

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        log_rho = 4 * c_noise.double()  # the denoiser's c_noise = log(rho) / 4
        index = self.schedule.index_of_log_ratio(log_rho).float()
        height, width = x.shape[-2:]
        padded, top, left = self._padded(x)
        out = self.unet(padded, index).sample[:, : self.config.channels, top : top + height, left : left + width]
        return -out if self.config.prediction_type == "v_prediction" else out


@dataclass(frozen=True)
class DiffusersFolder:
    """Where a diffusers DDPM's parts are: the UNet's folder (``config.json`` and weights) and the scheduler config."""

    root: Path
    unet: Path
    scheduler: Path


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ModelChoiceError(f"{path}: not a readable JSON config ({type(error).__name__})") from None
    if not isinstance(data, dict):
        raise ModelChoiceError(f"{path}: not a diffusers config (not a JSON object)")
    return data


def find_folder(root: Path) -> DiffusersFolder:
    """The parts of a pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``) or of a ``UNet2DModel`` folder
    with its scheduler config beside it (``scheduler_config.json`` in it, or ``../scheduler/``); a folder that is not
    a pixel-space DDPM raises :class:`ModelChoiceError` saying what it is."""
    index = root / "model_index.json"
    if index.is_file():
        parts = _json(index)
        pipeline = parts.get("_class_name", "a pipeline")
        if "vae" in parts or "vqvae" in parts:
            raise ModelChoiceError(
                f"{root}: {pipeline} is a latent diffusion model (it has an autoencoder); sda needs a pixel-space DDPM "
                "(a UNet2DModel on images)"
            )
        if "text_encoder" in parts or "unet" not in parts:
            raise ModelChoiceError(
                f"{root}: {pipeline} is not an unconditional DDPM pipeline (it needs a unet and no text encoder)"
            )
    unet = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (unet / "config.json").is_file():
        raise ModelChoiceError(
            f"{root}: not a diffusers model folder (no model_index.json, unet/config.json or config.json); pass a "
            "pipeline folder or a UNet2DModel folder"
        )
    candidates = [root / "scheduler" / "scheduler_config.json", unet / "scheduler_config.json"]
    candidates.append(unet.parent / "scheduler" / "scheduler_config.json")
    scheduler = next((path for path in candidates if path.is_file()), None)
    if scheduler is None:
        raise ModelChoiceError(
            f"{root}: no scheduler config beside the UNet (scheduler/scheduler_config.json or scheduler_config.json); "
            "sda needs it for the noise levels the model was trained on"
        )
    return DiffusersFolder(root, unet, scheduler)


def _check_unet(folder: DiffusersFolder, config: dict[str, Any]) -> DiffusersConfig:
    where = folder.unet / "config.json"
    kind = config.get("_class_name", "an unnamed model")
    if kind != "UNet2DModel":
        what = "a conditional UNet (e.g. text-to-image)" if "Condition" in str(kind) else "not a UNet2DModel"
        raise ModelChoiceError(f"{where}: {kind} is {what}; sda runs unconditional pixel-space UNet2DModel DDPMs")
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise ModelChoiceError(f"{where}: a class-conditional UNet2DModel; sda runs unconditional ones")
    if config.get("time_embedding_type", "positional") != "positional":
        raise ModelChoiceError(
            f"{where}: a UNet2DModel with {config['time_embedding_type']} time embedding (a score-SDE model); sda runs "
            "DDPMs (positional time embedding)"
        )
    channels, out = int(config.get("in_channels", 3)), int(config.get("out_channels", 3))
    if channels not in (1, 3) or out not in (channels, 2 * channels):
        raise ModelChoiceError(
            f"{where}: {channels} input and {out} output channels; sda runs models of grey or RGB images (1 or 3 "
            "channels in, as many out, or twice as many with a learned variance); a latent model is not one"
        )
    size = config.get("sample_size", 32)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    factor = 2 ** (len(config.get("block_out_channels", (0, 0, 0, 0))) - 1)
    return DiffusersConfig(channels, size, factor, "epsilon", out == 2 * channels)


def _check_scheduler(folder: DiffusersFolder, config: dict[str, Any]) -> str:
    kind = config.get("_class_name", "")
    if kind in _VARIANCE_EXPLODING:
        raise ModelChoiceError(
            f"{folder.scheduler}: {kind} is a variance-exploding score-SDE scheduler; sda runs DDPMs (beta schedules)"
        )
    if "num_train_timesteps" not in config and "trained_betas" not in config:
        raise ModelChoiceError(f"{folder.scheduler}: no num_train_timesteps or trained_betas; not a DDPM scheduler")
    if config.get("rescale_betas_zero_snr"):
        raise ModelChoiceError(
            f"{folder.scheduler}: zero terminal SNR (rescale_betas_zero_snr) has an infinite noise ratio at the last "
            "step; sda needs finite ones"
        )
    if config.get("beta_schedule", "linear") not in BETA_SCHEDULES and config.get("trained_betas") is None:
        raise ModelChoiceError(
            f"{folder.scheduler}: beta_schedule {config.get('beta_schedule')!r} is not supported; sda reads "
            f"{', '.join(BETA_SCHEDULES)}"
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ModelChoiceError(
            f"{folder.scheduler}: prediction_type {prediction!r} is not supported; sda reads "
            f"{', '.join(PREDICTION_TYPES)}"
        )
    return prediction


def _import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError:
        raise ModelChoiceError(f"diffusers models need the optional dependency: {INSTALL}") from None
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    return diffusers


def from_hub_cache(model_id: str) -> Path:
    """The folder of ``model_id`` (``owner/name``) in the local Hugging Face cache; sda never downloads."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelChoiceError(
            f"no model at {model_id}: not a file or folder; as a Hugging Face Hub id it needs the optional dependency: "
            f"{INSTALL}"
        ) from None
    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception:  # huggingface_hub raises several kinds, all meaning "not in the cache"
        raise ModelChoiceError(
            f"no model at {model_id}: not a file or folder, and not in the local Hugging Face cache (sda does not "
            f"download); get it with `huggingface-cli download {model_id} --local-dir DIR` and pass --model DIR"
        ) from None


def _inspect(root: str | Path) -> tuple[DiffusersFolder, DiffusersConfig, dict[str, Any]]:
    """The parts of the DDPM in ``root``, its checked config and its scheduler config (the UNet checked first)."""
    folder = find_folder(Path(root))
    unet_config, scheduler_config = _json(folder.unet / "config.json"), _json(folder.scheduler)
    config = _check_unet(folder, unet_config)
    return folder, replace(config, prediction_type=_check_scheduler(folder, scheduler_config)), scheduler_config


def load_diffusers(root: str | Path, device: torch.device, precision: torch.dtype | None) -> Denoiser:
    """The denoiser of the diffusers DDPM in folder ``root``, on ``device``, its network under autocast to
    ``precision`` (``None``: float32), in eval mode."""
    folder, config, scheduler_config = _inspect(root)
    if not (folder.unet / WEIGHTS).is_file():
        if (folder.unet / PICKLE_WEIGHTS).is_file():
            raise ModelChoiceError(
                f"{folder.unet}: the weights are {PICKLE_WEIGHTS}, a pickle that can run code when loaded, and sda "
                f'loads safetensors only; convert them once where you trust the file: python -c "from diffusers '
                f"import UNet2DModel as U; U.from_pretrained('{folder.unet}').save_pretrained('{folder.unet}')\""
            )
        raise ModelChoiceError(f"{folder.unet}: no {WEIGHTS}; the folder holds no UNet weights sda can read")
    diffusers = _import_diffusers()
    try:
        unet = diffusers.UNet2DModel.from_pretrained(folder.unet, use_safetensors=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelChoiceError(f"{folder.unet}: the UNet does not load ({reason})") from None
    unet.requires_grad_(False)
    schedule = DiscreteSchedule(alphas_cumprod(scheduler_config))
    backbone = DiffusersBackbone(unet.to(memory_format=torch.channels_last), schedule, config, precision)
    parametrisation = DenoiserConfig(parametrisation=PARAMETRISATION[config.prediction_type])
    denoiser = Denoiser(backbone, schedule, parametrisation, image_size=config.sample_size)
    return denoiser.to(device).eval()


def describe(root: str | Path) -> dict[str, Any]:
    """What ``sda info`` prints of a diffusers DDPM: its parts, the network's size and the schedule."""
    folder, config, scheduler_config = _inspect(root)
    schedule = DiscreteSchedule(alphas_cumprod(scheduler_config))
    low, high = schedule.ratio_range()
    parameters = None
    if (folder.unet / WEIGHTS).is_file():
        from safetensors import safe_open

        with safe_open(str(folder.unet / WEIGHTS), framework="pt") as handle:
            parameters = sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return {
        "kind": "diffusers DDPM",
        "folder": str(folder.root),
        "unet": str(folder.unet),
        "scheduler": str(folder.scheduler),
        "scheduler_class": scheduler_config.get("_class_name"),
        "parameters": parameters,
        "channels": config.channels,
        "sample_size": config.sample_size,
        "prediction_type": config.prediction_type,
        "learned_variance": config.learned_variance,
        "num_train_timesteps": schedule.steps,
        "beta_schedule": "trained" if scheduler_config.get("trained_betas") else scheduler_config.get("beta_schedule"),
        "noise_ratio_range": [low, high],
        "noise_range_pixel_units": [low / 2, high / 2],
    }
