"""Nothing lost when training is killed: checkpoints always load, and --resume continues from the saved step.

Training runs as a user runs it (``python -m sda_cli train``), writing its checkpoint every step. SIGKILL at
random moments must leave a model file and a state file that load, with steps that never go back; SIGTERM and
SIGINT (Ctrl-C) must write a checkpoint, leave no temporary file and exit cleanly (143 and 130).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sda_cli.checkpoint import CheckpointError, file_version, load_state, read_checkpoint, read_metadata
from sda_cli.train import state_path_for

TINY = ["--image-size", "16", "--widths", "16,32", "--blocks", "1", "--attention", "1", "--batch-size", "4"]


def start(image_dir: Path, out: Path, steps: int, *, resume: bool = False) -> subprocess.Popen[str]:
    """Start a training run that writes its checkpoint every step; SIGINT is not ignored, even under nohup."""
    command = [sys.executable, "-m", "sda_cli", "train", "--dataset", str(image_dir), *TINY]
    command += ["--steps", str(steps), "--checkpoint-every", "1", "-o", str(out), "-q"]
    command += ["--resume"] if resume else []
    with open(out.with_suffix(".stderr"), "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "SDA_DEBUG"} | {"OMP_NUM_THREADS": "1"},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def finish(process: subprocess.Popen[str], out: Path, timeout: float = 180) -> tuple[int, str]:
    return process.wait(timeout=timeout), out.with_suffix(".stderr").read_text()


def saved_step(out: Path) -> int | None:
    """The step of the state file, or None while there is none (a file renamed into place is whole)."""
    state = state_path_for(out)
    try:
        return read_metadata(state)["step"] if state.is_file() else None
    except CheckpointError:  # replaced between the check and the read: never half-written
        return None


def wait_for_step(process: subprocess.Popen[str], out: Path, above: int, timeout: float = 180) -> int:
    """Wait until the state file holds a step above ``above``; the timeout only guards against a hang.

    The file is read only when a new version is in place: reading validates the config (tens of milliseconds),
    and a poll that reads every time takes the CPU from the training run it waits for."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        current = file_version(state_path_for(out))
        if current is not None and current != seen:
            seen = current
            step = saved_step(out)
            if step is not None and step > above:
                return step
        assert process.poll() is None, out.with_suffix(".stderr").read_text()
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint after step {above} within {timeout} s")


def checkpoint_steps(out: Path) -> tuple[int, int]:
    """Load the model file and the state file (both must load); their steps."""
    _, config = read_checkpoint(out)
    tensors, metadata = load_state(state_path_for(out))
    assert any(name.startswith("optim.") for name in tensors)
    return config["training"]["step"], metadata["step"]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, image_dir: Path) -> None:
    rng = random.Random(0)  # the kill delays repeat from run to run
    out = tmp_path / "m.safetensors"
    last, history = 0, []
    for kill in range(4):
        process = start(image_dir, out, 100_000, resume=kill > 0)
        wait_for_step(process, out, last)
        delay = rng.uniform(0.0, 0.5)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        code, stderr = finish(process, out)
        assert code == -signal.SIGKILL
        if kill > 0:
            assert f"resuming from {state_path_for(out)} at step {last} " in stderr, stderr
        model_step, state_step = checkpoint_steps(out)
        history.append((round(delay, 3), model_step, state_step))
        # the model file is written first, then the state: a kill between them leaves the model one step ahead
        assert state_step > last and model_step - state_step in (0, 1), history
        last = state_step
    final = last + 3
    code, stderr = finish(start(image_dir, out, final, resume=True), out)
    assert code == 0, stderr
    assert f"resuming from {state_path_for(out)} at step {last} " in stderr and f"at step {final}" in stderr
    assert checkpoint_steps(out) == (final, final), history


@pytest.mark.parametrize(
    "name, code, message", [("SIGTERM", 143, "stopped by SIGTERM"), ("SIGINT", 130, "interrupted")]
)
def test_sigterm_and_ctrl_c_write_a_checkpoint_and_exit_cleanly(
    name: str, code: int, message: str, tmp_path: Path, image_dir: Path
) -> None:
    out = tmp_path / "m.safetensors"
    process = start(image_dir, out, 100_000)
    wait_for_step(process, out, 1)
    process.send_signal(getattr(signal, name))
    returned, stderr = finish(process, out)
    assert returned == code, stderr
    assert "Traceback" not in stderr and "error" not in stderr
    model_step, state_step = checkpoint_steps(out)
    assert model_step == state_step >= 2
    assert f"{message} at step {state_step}; checkpoint written" in stderr, stderr
    assert temporaries(tmp_path) == []
