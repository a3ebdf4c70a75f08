import json
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
    load_model,
    load_state,
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
    loaded, config = load_model(tmp_path / "m.safetensors")
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(original(x, 0.3), loaded(x, 0.3))
    assert config["format"] == 1 and config["schedule"] == {"name": "cosine", "eta": 1e-3}


def test_half_precision_file_is_half_the_size_and_close(tmp_path: Path) -> None:
    original = _model(tmp_path / "full.safetensors")
    _model(tmp_path / "half.safetensors", half=True)
    loaded, _ = load_model(tmp_path / "half.safetensors")
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
        load_model(path)
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
        load_model(tmp_path / "shape.safetensors")


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
        load_model(tmp_path / "cut.safetensors")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "absent.safetensors")


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
