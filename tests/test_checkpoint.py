import json
import re
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sda_cli import checkpoint
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

CONFIG = {
    "model": {"channels": 3, "widths": [8, 16], "blocks": 1, "attention_levels": [1], "heads": 2, "groups": 4},
    "denoiser": {"parametrisation": "edm"},
    "schedule": {"name": "cosine"},
    "image_size": 16,
    "channels": 3,
}


def _model(path: Path, half: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    denoiser = build_denoiser(CONFIG)
    for p in denoiser.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_model(path, denoiser, complete_config(CONFIG), half=half)
    return denoiser


def test_round_trip_is_exact_in_fp32(tmp_path: Path) -> None:
    original = _model(tmp_path / "m.safetensors")
    loaded, config = read_checkpoint(tmp_path / "m.safetensors")
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(original(x, 0.3), loaded(x, 0.3))
    assert config["format"] == 1 and config["schedule"] == {"name": "cosine", "eta": 1e-3}


def test_half_precision_file_is_half_the_size_and_close(tmp_path: Path) -> None:
    original = _model(tmp_path / "full.safetensors")
    _model(tmp_path / "half.safetensors", half=True)
    loaded, _ = read_checkpoint(tmp_path / "half.safetensors")
    assert (tmp_path / "half.safetensors").stat().st_size < 0.6 * (tmp_path / "full.safetensors").stat().st_size
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(original(x, 0.3), loaded(x, 0.3), atol=1e-2)


def _write_raw(path: Path, metadata: dict | None, tensors: dict | None = None) -> Path:
    save_file(tensors or {"w": torch.zeros(1)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    "metadata, message",
    [
        (None, "without sda metadata"),
        ({"sda": "{not json"}, "not valid JSON"),
        ({"sda": json.dumps({**CONFIG, "format": 99})}, "newer than this sda reads"),
        ({"sda": json.dumps({**CONFIG})}, "no format version"),
        ({"sda": json.dumps({**CONFIG, "format": 1, "model": {**CONFIG["model"], "widths": [10**9]}})}, "widths"),
        ({"sda": json.dumps({**CONFIG, "format": 1, "schedule": {"name": "cosine", "eta": "x"}})}, "finite"),
        ({"sda": json.dumps({**CONFIG, "format": 1, "schedule": {"name": "nope"}})}, "unknown schedule"),
        ({"sda": json.dumps({**CONFIG, "format": 1})}, "weights do not match"),
    ],
)
def test_bad_metadata_is_refused_with_one_line(tmp_path: Path, metadata: dict | None, message: str) -> None:
    path = _write_raw(tmp_path / "bad.safetensors", metadata)
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)


def test_wrong_tensor_shape_is_named(tmp_path: Path) -> None:
    _model(tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m.safetensors"), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = handle.metadata()
    tensors["stem.weight"] = torch.zeros(1, 2, 3, 3)
    save_file(tensors, str(tmp_path / "shape.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"stem\.weight has shape"):
        read_checkpoint(tmp_path / "shape.safetensors")


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_not_safetensors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_metadata(path)


def test_truncated_file(tmp_path: Path) -> None:
    _model(tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "cut.safetensors")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.safetensors")


LOADS = 30


def _version(path: Path, step: int) -> None:
    """A training state whose every number is ``step`` and whose size changes with it."""
    save_state(
        path, {"x": torch.full((1000 + 997 * (step % 7),), float(step))}, {**CONFIG, "step": step, "optimizer": []}
    )


def _assert_whole(tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    step = metadata["step"]
    assert tensors["x"].shape == (1000 + 997 * (step % 7),) and bool((tensors["x"] == step).all()), step


def test_a_file_replaced_during_the_read_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint renamed into place between safetensors' two opens is read again, whole, not mixed."""
    path = tmp_path / "m.state.safetensors"
    _version(path, 1)
    opened: list[str] = []

    def replaced_on_first_open(name: str, **kwargs: str) -> object:
        handle = safe_open(name, **kwargs)
        opened.append(name)
        if len(opened) == 1:
            _version(path, 2)  # while the reader holds the first version open
        return handle

    monkeypatch.setattr(checkpoint, "safe_open", replaced_on_first_open)
    tensors, metadata = load_state(path)
    assert len(opened) == 2 and metadata["step"] == 2
    _assert_whole(tensors, metadata)


def test_a_file_replaced_at_every_read_gives_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.state.safetensors"
    _version(path, 1)
    steps = iter(range(2, 100))

    def always_replaced(name: str, **kwargs: str) -> object:
        _version(path, next(steps))
        return safe_open(name, **kwargs)

    monkeypatch.setattr(checkpoint, "safe_open", always_replaced)
    with pytest.raises(CheckpointError, match="replaced 5 times while being read; try again"):
        read_metadata(path)


def test_loading_while_another_thread_saves_always_gives_one_whole_version(tmp_path: Path) -> None:
    """Saving in a loop (a training run) while loading in another: every load succeeds and is one version.

    Each load starts one save in the other thread, which may run during the load, and the next load begins only once
    that save has finished. So loads keep running into saves in progress, but, as with a training run (whose steps
    between saves take longer than a load), no load sees more than two replacements: never the 5 after which loading
    gives up (test_a_file_replaced_at_every_read_gives_a_one_line_error). Load i begins after save i - 1 and ends
    before save i + 1 begins, so it sees step i - 1 or i, and the steps seen rise at least every other load whatever
    the scheduling. (A writer saving flat out, or one the loader did not wait for, made the count depend on how a
    loaded machine scheduled the two threads.)
    """
    path = tmp_path / "m.state.safetensors"
    _version(path, 0)
    stop, load_started, saved = threading.Event(), threading.Event(), threading.Event()

    def save_once_per_load() -> None:
        step = 1
        while load_started.wait(timeout=120) and not stop.is_set():  # the timeout only guards against a hang
            load_started.clear()
            _version(path, step)
            step += 1
            saved.set()

    writer = threading.Thread(target=save_once_per_load)
    writer.start()
    steps = []
    try:
        for _ in range(LOADS):
            saved.clear()
            load_started.set()
            tensors, metadata = load_state(path)
            _assert_whole(tensors, metadata)
            steps.append(metadata["step"])
            assert saved.wait(timeout=120)
    finally:
        stop.set()
        load_started.set()
        writer.join()
    assert all(i - 1 <= step <= i for i, step in enumerate(steps, start=1)), steps
    assert len(set(steps)) >= LOADS // 2  # the file really was replaced under the reader


def test_model_config_is_the_config_sda_train_records() -> None:
    """The defaults of ``sda train``, and one block count or one per level."""
    assert checkpoint.model_config() == {
        "model": {
            "channels": 3,
            "widths": [64, 128, 192],
            "blocks": 2,
            "attention_levels": [2],
            "patch": 1,
            "norm": "group",
        },
        "denoiser": {"parametrisation": "edm", "p_mean": -1.2, "p_std": 1.2},
        "schedule": {"name": "cosine"},
    }
    assert checkpoint.model_config(blocks=(3,))["model"]["blocks"] == 3
    assert checkpoint.model_config(widths=(16, 32), blocks=(2, 1))["model"]["blocks"] == [2, 1]
    crops = checkpoint.model_config(widths=(8, 16), patch=2, attention_levels=(), norm="none", crop=16, image_size=30)
    assert crops["model"]["patch"] == 2 and crops["model"]["norm"] == "none"


WIDTHS = "--widths needs 1 to 8 widths between 1 and 4096, such as 64,128,192"
SHARED_LIMITS = [
    ({"channels": 2}, {"model": {"channels": 2}}, "--channels must be 1 or 3"),
    ({"widths": (8,) * 9, "image_size": 256}, {"model": {"widths": [8] * 9}}, WIDTHS),
    ({"widths": (64, 4097)}, {"model": {"widths": [64, 4097]}}, WIDTHS),
    ({"widths": (64, 0)}, {"model": {"widths": [64, 0]}}, WIDTHS),
    (
        {"widths": (63, 128)},
        {"model": {"widths": [63, 128]}},
        "--widths must begin with an even width, not 63, such as",
    ),
    (
        {"widths": (16, 32), "blocks": (2, 1, 1)},
        {"model": {"widths": [16, 32], "blocks": [2, 1, 1]}},
        "--blocks needs one count, or one per level (2), each from 1 to 16",
    ),
    ({"blocks": 17}, {"model": {"blocks": 17}}, "--blocks needs one count, or one per level (3), each from 1 to 16"),
    ({"attention_levels": (8,)}, {"model": {"attention_levels": [8]}}, "--attention takes levels from 0 to 7"),
    ({"patch": 17}, {"model": {"patch": 17}}, "--patch must be from 1 to 16"),
    ({"norm": "batch"}, {"model": {"norm": "batch"}}, "--norm must be group or none"),
    (
        {"parametrisation": "y"},
        {"denoiser": {"parametrisation": "y"}},
        "--parametrisation must be one of edm, v, eps, x",
    ),
    (
        {"widths": (16, 18), "attention_levels": (1,)},
        {"model": {"widths": [16, 18], "attention_levels": [1]}},
        "the widths [18] of the levels with attention must be multiples of 4 (the attention heads); change --widths",
    ),
    (
        {"widths": (4096,) * 4, "blocks": 16},
        {"model": {"widths": [4096] * 4, "blocks": 16}},
        "more than the limit of 500,000,000; change --widths, --blocks or --attention",
    ),
]


@pytest.mark.parametrize("options, in_file, message", SHARED_LIMITS)
def test_each_limit_refuses_the_option_and_the_same_value_in_a_file(options: dict, in_file: dict, message: str) -> None:
    """model_config names the option and what to do; check_config refuses the same value read from a file."""
    with pytest.raises(CheckpointError, match=re.escape(message)) as info:
        checkpoint.model_config(**options)
    assert "\n" not in str(info.value)
    config = {"format": 1, **checkpoint.model_config(image_size=256)}
    for section, values in in_file.items():
        config[section].update(values)
    with pytest.raises(CheckpointError):
        checkpoint.check_config(config)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"widths": (8, 16), "patch": 2, "crop": 14}, "--crop must be a multiple of 4 for 2 levels and --patch 2"),
        ({"image_size": 30}, "--image-size must be a multiple of 4 for 3 levels and --patch 1"),
        ({"image_size": 1 << 15}, "--image-size must be a whole number from 1 to 16384"),
        ({"noise_std": 0.0}, "--noise-std must be a number of at least 0.01"),
        ({"noise_mean": float("nan")}, "--noise-mean must be a finite number"),
    ],
)
def test_training_limits_name_the_option(options: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(message)):
        checkpoint.model_config(**options)


@pytest.mark.parametrize(
    "limit, lowered, options",
    [
        ("MAX_LEVELS", 2, {"widths": (8, 16, 32)}),
        ("MAX_WIDTH", 100, {"widths": (64, 128)}),
        ("MAX_BLOCKS", 3, {"blocks": 4}),
        ("MAX_PATCH", 2, {"patch": 4, "image_size": 64}),
    ],
)
def test_a_limit_is_defined_once(monkeypatch: pytest.MonkeyPatch, limit: str, lowered: int, options: dict) -> None:
    """Lowering one constant moves the limit of the options and of files alike."""
    config = {"format": 1, **checkpoint.model_config(**options, attention_levels=())}
    monkeypatch.setattr(checkpoint, limit, lowered)
    with pytest.raises(CheckpointError, match=f"{lowered}"):
        checkpoint.model_config(**options, attention_levels=())
    with pytest.raises(CheckpointError, match=f"{lowered}"):
        checkpoint.check_config(config)
