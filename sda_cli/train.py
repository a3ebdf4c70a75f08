r"""The training loop: denoising score matching with EMA, mixed precision, exact resume and DDP.

Each step draws a batch from the in-memory data set, random horizontal flips, times from the
denoiser's noise-level distribution, and minimises the denoising score-matching loss
(Vincent, 2011; Song et al., 2021) in the parametrisation's target space (see :mod:`sda_cli.denoiser`).
AdamW with linear warm-up and gradient clipping; an exponential moving average of the weights
(Polyak averaging) is what gets shipped and sampled from.

Two files are written atomically every ``checkpoint_every`` steps, on Ctrl-C/SIGTERM and at the end:
the model file (EMA weights, fp16, small) and the training state (weights, EMA, optimiser,
random state, step), so that ``kill -9`` loses at most the steps since the last checkpoint. A run
resumes from the state file exactly, or from a model file alone with a fresh optimiser.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the backbone is wrapped in
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); each rank draws its own batches from its own
random stream, and only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sda_cli.checkpoint import (
    CheckpointError,
    build_denoiser,
    complete_config,
    load_model,
    load_state,
    read_metadata,
    save_model,
    save_state,
)
from sda_cli.data import Dataset
from sda_cli.denoiser import Denoiser, autocast_dtype
from sda_cli.models import pick_device

__all__ = ["StepReport", "TrainConfig", "TrainingError", "learning_rate", "pick_device", "state_path_for", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; recorded in checkpoints."""

    steps: int = 100_000
    batch_size: int = 64
    lr: float = 4e-4
    warmup: int = 500
    decay: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 500
    seed: int = 0
    precision: str = "auto"
    compile: bool = False


@dataclass
class StepReport:
    """What the caller is told after each step (rank 0 only)."""

    step: int
    total: int
    loss: float
    images_per_second: float
    checkpointed: bool = False


class TrainingError(RuntimeError):
    """Training cannot go on; the last good checkpoint is kept."""


def learning_rate(config: TrainConfig, step: int, optimiser_start: int = 0) -> float:
    """The rate of step ``step + 1``: a linear warm-up, a plateau, then an optional linear decay to zero.

    lr(s) = lr · min(1, (s − s₀ + 1) / warmup) · min(1, (steps − s) / decay), with s₀ the step at which this
    optimiser started (a fresh one warms up again) and no decay factor when ``decay`` is 0. A short decay at the
    end of a long run at a constant rate is the warmup-stable-decay schedule (Hu et al., 2024, "MiniCPM"), which
    they found to match a cosine schedule fixed in advance; unlike one, the run can still be extended: raise
    ``steps`` and resume.
    """
    rate = config.lr * min(1.0, (step - optimiser_start + 1) / max(1, config.warmup))
    if config.decay > 0:
        rate *= min(1.0, max(0, config.steps - step) / config.decay)
    return rate


def state_path_for(model_path: Path) -> Path:
    """The training state lives beside the model file: ``x.safetensors`` → ``x.state.safetensors``."""
    return model_path.with_name(model_path.name.removesuffix(".safetensors") + ".state.safetensors")


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    state = optimizer.state_dict()
    tensors = {
        f"optim.{index}.{key}": torch.as_tensor(value)
        for index, slots in state["state"].items()
        for key, value in slots.items()
    }
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}


class _Stop:
    """Turns SIGTERM into a clean stop at the end of the current step (Ctrl-C is KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> _Stop:
        self.previous = signal.signal(signal.SIGTERM, self._handle) if _is_main_thread() else None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *args: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def train(
    model_config: dict[str, Any],
    config: TrainConfig,
    dataset: Dataset,
    out: Path,
    *,
    resume: bool = False,
    device: torch.device | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[int, Denoiser]:
    """Train (or resume) a denoiser, write ``out`` and its training state; return the step and the EMA denoiser.

    ``model_config`` holds the ``model``, ``denoiser`` and ``schedule`` sections of a checkpoint config;
    on resume, the config stored in the checkpoint wins.
    """
    log = log or (lambda message: None)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = device or pick_device("auto")
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    if distributed and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    is_main = rank == 0
    out = Path(out)
    state_file = state_path_for(out)

    step, wall = 0, 0.0
    optimiser_start = 0  # the step the optimiser's moments start at: warm-up counts from it
    state_tensors: dict[str, Tensor] | None = None
    state_meta: dict[str, Any] = {}
    if resume:
        if state_file.is_file():
            state_tensors, state_meta = load_state(state_file)
            model_config = {k: state_meta[k] for k in ("model", "denoiser", "schedule")}
            step, wall = int(state_meta["step"]), float(state_meta.get("wall_time", 0.0))
            optimiser_start = int(state_meta.get("optimiser_start", 0))
            log(f"resuming from {state_file} at step {step} (weights, EMA, optimiser and random state)")
        elif out.is_file():
            meta = read_metadata(out)
            model_config = {k: meta[k] for k in ("model", "denoiser", "schedule")}
            step = int(meta.get("training", {}).get("step", 0))
            wall = float(meta.get("training", {}).get("wall_time", 0.0))
            optimiser_start = step
            log(f"resuming from weights {out} at step {step} with a fresh optimiser (no state file found)")
        else:
            raise CheckpointError(f"{out}: nothing to resume (no model or state file); drop --resume to start anew")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        denoiser = build_denoiser(model_config)
    unet = denoiser.backbone.to(device, memory_format=torch.channels_last)
    if state_tensors is not None:
        unet.load_state_dict(_strip("model.", state_tensors))
    elif resume:
        unet.load_state_dict(load_model(out, device)[0].backbone.state_dict())

    trained: nn.Module = unet
    if config.compile:
        trained = torch.compile(trained)  # type: ignore[assignment]
    if distributed:
        trained = nn.parallel.DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )
    objective = Denoiser(trained, denoiser.schedule, denoiser.config)
    ema = copy.deepcopy(unet).requires_grad_(False).eval()  # after DDP has broadcast rank 0's weights
    if state_tensors is not None:
        ema.load_state_dict(_strip("ema.", state_tensors))

    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused, foreach=not fused
    )
    if state_tensors is not None:
        optimizer.load_state_dict(_unflatten_optimizer(state_tensors, state_meta["optimizer"]))

    generator = torch.Generator(device=device)
    if state_tensors is not None and world == 1 and "rng.generator" in state_tensors:
        generator.set_state(state_tensors["rng.generator"])
    else:
        generator.manual_seed(config.seed + 1_000_003 * rank + 7919 * step)

    precision = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    data = dataset.to(device)
    channels, height = data.channels, data.size
    expected_channels = model_config["model"].get("channels", 3)
    if channels != expected_channels:
        raise TrainingError(f"the data have {channels} channels but the model has {expected_channels}")
    checkpoint_config = {
        **complete_config(model_config),
        "image_size": height,
        "channels": channels,
        "dataset": dataset.name,
    }

    def write(at_step: int, seconds: float) -> None:
        if not is_main:
            return
        training = {
            **asdict(config),
            "step": at_step,
            "images_seen": at_step * config.batch_size * world,
            "world_size": world,
            "wall_time": round(seconds, 1),
        }
        save_model(out, Denoiser(ema, denoiser.schedule, denoiser.config), {**checkpoint_config, "training": training})
        optim_tensors, groups = _flatten_optimizer(optimizer)
        tensors = {
            **{f"model.{k}": v for k, v in unet.state_dict().items()},
            **{f"ema.{k}": v for k, v in ema.state_dict().items()},
            **optim_tensors,
            "rng.generator": generator.get_state(),
        }
        save_state(
            state_file,
            tensors,
            {
                **checkpoint_config,
                "training": training,
                "step": at_step,
                "wall_time": seconds,
                "optimizer": groups,
                "optimiser_start": optimiser_start,
            },
        )
        if loss_count:  # a stop right after a checkpoint saves again but has no new loss to log
            with open(out.with_name(out.name.removesuffix(".safetensors") + ".log.csv"), "a") as handle:
                handle.write(f"{at_step},{loss_sum / loss_count:.6f},{seconds:.1f}\n")

    ema_params, params = list(ema.parameters()), list(unet.parameters())
    started = time.perf_counter() - wall
    last_loss, window, window_start = math.nan, 0, time.perf_counter()
    loss_sum, loss_count = 0.0, 0
    with _Stop() as stop:
        try:
            while step < config.steps:
                lr = learning_rate(config, step, optimiser_start)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = data.batch(config.batch_size, generator).contiguous(memory_format=torch.channels_last)
                t = denoiser.sample_times(config.batch_size, generator=generator, device=device)
                noise = torch.randn(x.shape, generator=generator, device=device).contiguous(
                    memory_format=torch.channels_last
                )
                with torch.autocast(device.type, dtype=precision or torch.float32, enabled=precision is not None):
                    loss = objective.loss(x, t, noise).mean()
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"non-finite loss at step {step + 1}; stopped, the last checkpoint ({out}) is kept; "
                        "lower --lr and resume"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(params, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                step += 1
                decay = min(config.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, params, 1 - decay)

                last_loss = loss.item()
                loss_sum, loss_count = loss_sum + last_loss, loss_count + 1
                window += config.batch_size * world
                checkpointed = step % config.checkpoint_every == 0 or step == config.steps
                if checkpointed:
                    write(step, time.perf_counter() - started)
                    loss_sum, loss_count = 0.0, 0
                if is_main and on_step is not None:
                    rate = window / max(time.perf_counter() - window_start, 1e-9)
                    on_step(StepReport(step, config.steps, last_loss, rate, checkpointed))
                if step % 50 == 0:
                    window, window_start = 0, time.perf_counter()
                if stop.requested:
                    write(step, time.perf_counter() - started)
                    log(f"stopped by SIGTERM at step {step}; checkpoint written")
                    break
        except KeyboardInterrupt:
            write(step, time.perf_counter() - started)
            log(f"interrupted at step {step}; checkpoint written, continue with --resume")
            raise
        finally:
            if distributed and dist.is_initialized():
                dist.destroy_process_group()
    return step, Denoiser(ema, denoiser.schedule, denoiser.config)


def _strip(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
