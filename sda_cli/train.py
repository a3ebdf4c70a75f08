r"""The training loop: denoising score matching with EMA, mixed precision, exact resume and DDP.

:func:`train` runs in named phases: set-up (:func:`_setup_distributed`), resume (:func:`_resume`), build (the
network, its EMA, the optimiser, the random stream and the precision: :func:`_build`), the data (:func:`_data`),
then the loop of steps (:func:`_step`) and checkpoints (:func:`_checkpoint`).

Each step draws a batch from the in-memory data set, random horizontal flips, times from the
denoiser's noise-level distribution, and minimises the denoising score-matching loss
(Vincent, 2011; Song et al., 2021) in the parametrisation's target space (see :mod:`sda_cli.denoiser`).
AdamW with linear warm-up and gradient clipping; an exponential moving average of the weights
(Polyak averaging) is what gets shipped and sampled from.

Two files are written atomically every ``checkpoint_every`` steps, on Ctrl-C/SIGTERM and at the end:
the model file (EMA weights, fp16, small) and the training state (weights, EMA, optimiser,
random state, step), so that ``kill -9`` loses at most the steps since the last checkpoint; each checkpoint
adds a row to the loss log beside them (``x.log.csv``: step, mean loss since the last row, seconds). SIGTERM
stops the run after the current step, Ctrl-C raises KeyboardInterrupt again once the files are written. A run
resumes from the state file exactly, or from a model file alone with a fresh optimiser (its warm-up counted from
the resume step).

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the backbone is wrapped in
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); each rank draws its own batches from its own
random stream, and only rank 0 writes files and reports progress.
"""

from __future__ import annotations

import copy
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from sda_cli.checkpoint import (
    CheckpointError,
    build_denoiser,
    complete_config,
    load_state,
    read_checkpoint,
    read_metadata,
    save_model,
    save_state,
)
from sda_cli.data import Dataset
from sda_cli.denoiser import PRECISIONS, Denoiser, autocast_dtype
from sda_cli.models import pick_device

__all__ = ["StepReport", "TrainConfig", "TrainingError", "learning_rate", "pick_device", "state_path_for", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; recorded in checkpoints. An unknown ``precision`` raises ValueError naming the option."""

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

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")


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
    """The optimiser's state as ``optim.{parameter}.{slot}`` tensors, and its hyper-parameter groups (JSON)."""
    state = optimizer.state_dict()
    tensors = {
        f"optim.{index}.{key}": torch.as_tensor(value)
        for index, slots in state["state"].items()
        for key, value in slots.items()
    }
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The optimiser state dict back from :func:`_flatten_optimizer`'s tensors and groups."""
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": groups}


def _strip(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors whose names start with ``prefix``, without it."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class _Ranks:
    """This process among the run's: its rank, their number, and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and reports progress."""
        return self.rank == 0


def _setup_distributed(device: torch.device) -> _Ranks:
    """Join the process group under ``torchrun`` (``WORLD_SIZE > 1``): NCCL on GPUs, one per rank, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Ranks(0, 1, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return _Ranks(dist.get_rank(), dist.get_world_size(), device)


class _Start(NamedTuple):
    """Where a run starts: step 0 of a new run, or what a resumed run read from its files."""

    model_config: dict[str, Any]
    """The ``model``, ``denoiser`` and ``schedule`` sections; a resumed run's come from its files."""
    step: int = 0
    wall: float = 0.0
    """Seconds of training before this run."""
    optimiser_start: int = 0
    """The step at which the optimiser's moments start: its warm-up counts from it."""
    state: dict[str, Tensor] | None = None
    """The state file's ``model.*``, ``ema.*``, ``optim.*`` and ``rng.generator`` tensors: an exact resume."""
    optimizer_groups: list[dict[str, Any]] | None = None
    """The optimiser's hyper-parameter groups, from the state file."""
    weights: Path | None = None
    """The model file whose weights a resume from weights alone trains on, with a fresh optimiser."""


def _resume(out: Path, log: Callable[[str], None]) -> _Start:
    """Where a resumed run starts; the config stored in its files wins.

    From the training state beside ``out`` when there is one: weights, EMA, optimiser and random stream, so the run
    goes on exactly as if it had not stopped. Else from ``out``'s (EMA) weights alone, with a fresh optimiser whose
    warm-up counts from the resume step (:func:`learning_rate`).
    """
    state_file = state_path_for(out)
    if state_file.is_file():
        tensors, meta = load_state(state_file)
        step, wall = int(meta["step"]), float(meta.get("wall_time", 0.0))
        log(f"resuming from {state_file} at step {step} (weights, EMA, optimiser and random state)")
        start = int(meta.get("optimiser_start", 0))
        return _Start(_sections(meta), step, wall, start, tensors, meta["optimizer"])
    if out.is_file():
        meta = read_metadata(out)
        step = int(meta.get("training", {}).get("step", 0))
        wall = float(meta.get("training", {}).get("wall_time", 0.0))
        log(f"resuming from weights {out} at step {step} with a fresh optimiser (no state file found)")
        return _Start(_sections(meta), step, wall, optimiser_start=step, weights=out)
    raise CheckpointError(f"{out}: nothing to resume (no model or state file); drop --resume to start anew")


def _sections(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``model``, ``denoiser`` and ``schedule`` sections of a file's config."""
    return {k: meta[k] for k in ("model", "denoiser", "schedule")}


@dataclass
class _Run:
    """What the steps change (weights, EMA, optimiser, random stream) and how they run (device, precision)."""

    denoiser: Denoiser
    """The denoiser built from the config: its schedule, parametrisation and law of noise levels."""
    unet: nn.Module
    """The weights being trained (``denoiser.backbone``)."""
    objective: Denoiser
    """The denoiser the loss goes through: the U-Net, compiled and/or wrapped in DistributedDataParallel."""
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    optimiser_start: int
    """The step at which the optimiser's moments start: its warm-up counts from it."""
    generator: torch.Generator
    ranks: _Ranks
    precision: torch.dtype | None
    """The autocast dtype, or None for float32."""
    scaler: torch.amp.GradScaler
    params: list[nn.Parameter] = field(init=False)
    ema_params: list[nn.Parameter] = field(init=False)

    def __post_init__(self) -> None:
        self.params, self.ema_params = list(self.unet.parameters()), list(self.ema.parameters())

    @property
    def shipped(self) -> Denoiser:
        """The EMA denoiser: what is written to the model file and sampled from."""
        return Denoiser(self.ema, self.denoiser.schedule, self.denoiser.config)


def _build(start: _Start, config: TrainConfig, ranks: _Ranks) -> _Run:
    """The network (initialised from ``config.seed``, then given the resumed weights), wrapped for training, its
    EMA, AdamW, the random stream and the mixed precision (a gradient scaler for fp16)."""
    with torch.random.fork_rng(devices=[]):  # the initialisation leaves the global random state as it was
        torch.manual_seed(config.seed)
        denoiser = build_denoiser(start.model_config)
    unet = denoiser.backbone.to(ranks.device, memory_format=torch.channels_last)
    if start.state is not None:
        unet.load_state_dict(_strip("model.", start.state))
    elif start.weights is not None:
        unet.load_state_dict(read_checkpoint(start.weights, ranks.device)[0].backbone.state_dict())
    trained: nn.Module = unet
    if config.compile:
        trained = torch.compile(trained)  # type: ignore[assignment]
    if ranks.world > 1:
        cuda = ranks.device.type == "cuda"
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=[ranks.device.index] if cuda else None)
    objective = Denoiser(trained, denoiser.schedule, denoiser.config)
    ema = copy.deepcopy(unet).requires_grad_(False).eval()  # after DDP has broadcast rank 0's weights
    if start.state is not None:
        ema.load_state_dict(_strip("ema.", start.state))
    optimizer = _optimiser(unet, config, ranks.device, start)
    generator = _generator(config, ranks, start)
    precision = autocast_dtype(config.precision, ranks.device)
    scaler = torch.amp.GradScaler(ranks.device.type, enabled=precision == torch.float16)
    return _Run(denoiser, unet, objective, ema, optimizer, start.optimiser_start, generator, ranks, precision, scaler)


def _optimiser(unet: nn.Module, config: TrainConfig, device: torch.device, start: _Start) -> torch.optim.Optimizer:
    """AdamW (fused on GPUs), with the moments and step counts of the state file when the run resumes from it."""
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused, foreach=not fused
    )
    if start.state is not None:
        optimizer.load_state_dict(_unflatten_optimizer(start.state, start.optimizer_groups or []))
    return optimizer


def _generator(config: TrainConfig, ranks: _Ranks, start: _Start) -> torch.Generator:
    """The stream of batches, flips, times and noise: the state file's on one process, so that a resume continues
    it; else seeded from the seed, the rank and the step, so that ranks, and runs resumed otherwise, draw anew."""
    generator = torch.Generator(device=ranks.device)
    if start.state is not None and ranks.world == 1 and "rng.generator" in start.state:
        generator.set_state(start.state["rng.generator"])
    else:
        generator.manual_seed(config.seed + 1_000_003 * ranks.rank + 7919 * start.step)
    return generator


def _data(dataset: Dataset, model_config: dict[str, Any], device: torch.device) -> tuple[Dataset, dict[str, Any]]:
    """The data on ``device``, checked against the model's channels, and the config that its checkpoints record: the
    model sections with every default written out, the image size and channels, and the data set's name."""
    data = dataset.to(device)
    expected = model_config["model"].get("channels", 3)
    if data.channels != expected:
        raise TrainingError(f"the data have {data.channels} channels but the model has {expected}")
    record = {**complete_config(model_config), "image_size": data.size, "channels": data.channels}
    return data, {**record, "dataset": dataset.name}


def _step(run: _Run, data: Dataset, config: TrainConfig, step: int, out: Path) -> float:
    """Take step ``step + 1``; return its loss.

    The learning rate of :func:`learning_rate`; a batch x, times t and noise ε from the run's stream; the denoising
    loss (:meth:`Denoiser.loss`) under autocast; backward through the gradient scaler, the gradient's norm clipped
    to ``grad_clip``, AdamW; then the EMA θ̄ ← d·θ̄ + (1 − d)·θ with d = min(ema_decay, (1 + s)/(10 + s)) at the
    new step s, a short average at first. A non-finite loss stops the run before any update.
    """
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(config, step, run.optimiser_start)
    device, generator = run.ranks.device, run.generator
    x = data.batch(config.batch_size, generator).contiguous(memory_format=torch.channels_last)
    t = run.denoiser.sample_times(config.batch_size, generator=generator, device=device)
    noise = torch.randn(x.shape, generator=generator, device=device).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=run.precision or torch.float32, enabled=run.precision is not None):
        loss = run.objective.loss(x, t, noise).mean()
    new = step + 1
    if not torch.isfinite(loss):
        raise TrainingError(
            f"non-finite loss at step {new}; stopped, the last checkpoint ({out}) is kept; lower --lr and resume"
        )
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    nn.utils.clip_grad_norm_(run.params, config.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    decay = min(config.ema_decay, (1 + new) / (10 + new))
    with torch.no_grad():
        torch._foreach_lerp_(run.ema_params, run.params, 1 - decay)
    return loss.item()


@dataclass(frozen=True)
class _Files:
    """Where a run writes, and what its checkpoints record besides the weights."""

    out: Path
    """The model file; the training state and the loss log lie beside it."""
    config: dict[str, Any]
    """The checkpoint config (:func:`_data`)."""
    training: TrainConfig


class _Meter:
    """The clock of a run (counting its earlier ``wall`` seconds), the mean loss since the last checkpoint, and the
    images per second since the start of the current 50-step window."""

    def __init__(self, wall: float) -> None:
        self.started = time.perf_counter() - wall
        self.loss_sum, self.loss_count = 0.0, 0
        self.images, self.window_start = 0, time.perf_counter()

    def add(self, loss: float, images: int) -> None:
        self.loss_sum, self.loss_count = self.loss_sum + loss, self.loss_count + 1
        self.images += images

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.window_start, 1e-9)

    def next_window(self, step: int) -> None:
        if step % 50 == 0:
            self.images, self.window_start = 0, time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def mean_loss(self) -> float | None:
        """The mean loss of the steps since the last call, or None if there were none."""
        mean = self.loss_sum / self.loss_count if self.loss_count else None
        self.loss_sum, self.loss_count = 0.0, 0
        return mean


def _checkpoint(run: _Run, files: _Files, step: int, meter: _Meter) -> None:
    """On rank 0, write the model file (EMA weights, fp16) and the training state, each atomically, then append
    ``step,mean loss,seconds`` to the loss log (no row when no step ran since the last checkpoint)."""
    if not run.ranks.is_main:
        return
    seconds, mean_loss, world = meter.seconds(), meter.mean_loss(), run.ranks.world
    training = {
        **asdict(files.training),
        "step": step,
        "images_seen": step * files.training.batch_size * world,
        "world_size": world,
        "wall_time": round(seconds, 1),
    }
    save_model(files.out, run.shipped, {**files.config, "training": training})
    optim_tensors, groups = _flatten_optimizer(run.optimizer)
    tensors = {
        **{f"model.{k}": v for k, v in run.unet.state_dict().items()},
        **{f"ema.{k}": v for k, v in run.ema.state_dict().items()},
        **optim_tensors,
        "rng.generator": run.generator.get_state(),
    }
    state = {"step": step, "wall_time": seconds, "optimizer": groups, "optimiser_start": run.optimiser_start}
    save_state(state_path_for(files.out), tensors, {**files.config, "training": training, **state})
    if mean_loss is not None:
        with open(files.out.with_name(files.out.name.removesuffix(".safetensors") + ".log.csv"), "a") as handle:
            handle.write(f"{step},{mean_loss:.6f},{seconds:.1f}\n")


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
    on resume, the config stored in the checkpoint wins. A checkpoint is written every ``checkpoint_every`` steps and
    at the end; SIGTERM writes one and stops, Ctrl-C writes one and raises KeyboardInterrupt again.
    """
    log = log or (lambda message: None)
    ranks = _setup_distributed(device or pick_device("auto"))
    out = Path(out)
    start = _resume(out, log) if resume else _Start(model_config)
    run = _build(start, config, ranks)
    data, record = _data(dataset, start.model_config, ranks.device)
    files, step, meter = _Files(out, record, config), start.step, _Meter(start.wall)
    with _Stop() as stop:
        try:
            while step < config.steps:
                loss = _step(run, data, config, step, out)
                step += 1
                meter.add(loss, config.batch_size * ranks.world)
                checkpointed = step % config.checkpoint_every == 0 or step == config.steps
                if checkpointed:
                    _checkpoint(run, files, step, meter)
                if ranks.is_main and on_step is not None:
                    on_step(StepReport(step, config.steps, loss, meter.rate(), checkpointed))
                meter.next_window(step)
                if stop.requested:
                    _checkpoint(run, files, step, meter)
                    log(f"stopped by SIGTERM at step {step}; checkpoint written")
                    break
        except KeyboardInterrupt:
            _checkpoint(run, files, step, meter)
            log(f"interrupted at step {step}; checkpoint written, continue with --resume")
            raise
        finally:
            if ranks.world > 1 and dist.is_initialized():
                dist.destroy_process_group()
    return step, run.shipped
