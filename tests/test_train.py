import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL
from safetensors.torch import load_file

from sda_cli.checkpoint import read_checkpoint, read_metadata
from sda_cli.data import image_folder
from sda_cli.train import (
    StepReport,
    TrainConfig,
    TrainingError,
    _build,
    _Ranks,
    _resume,
    _Start,
    _step,
    learning_rate,
    state_path_for,
    train,
)

CONFIG = TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup=2, checkpoint_every=3, seed=1)
CPU = torch.device("cpu")


def test_resume_from_state_is_exact(tmp_path: Path, image_dir: Path) -> None:
    """6 steps straight and 3 + 3 steps with a resume give bit-identical weights, EMA and optimiser."""
    data = image_folder(image_dir, 16)
    train(TINY_MODEL, CONFIG, data, tmp_path / "straight.safetensors", device=CPU)
    train(TINY_MODEL, replace(CONFIG, steps=3), data, tmp_path / "split.safetensors", device=CPU)
    step, _ = train(TINY_MODEL, CONFIG, data, tmp_path / "split.safetensors", resume=True, device=CPU)
    assert step == 6
    straight = load_file(str(state_path_for(tmp_path / "straight.safetensors")))
    split = load_file(str(state_path_for(tmp_path / "split.safetensors")))
    assert straight.keys() == split.keys()
    for name in straight:
        assert torch.equal(straight[name], split[name]), name
    assert read_metadata(tmp_path / "split.safetensors")["training"]["step"] == 6


def test_resume_from_weights_alone(tmp_path: Path, image_dir: Path) -> None:
    data = image_folder(image_dir, 16)
    out = tmp_path / "m.safetensors"
    train(TINY_MODEL, replace(CONFIG, steps=3), data, out, device=CPU)
    before, _ = read_checkpoint(out)
    state_path_for(out).unlink()
    step, _ = train(TINY_MODEL, CONFIG, data, out, resume=True, device=CPU)
    assert step == 6
    after, config = read_checkpoint(out)
    assert config["training"]["step"] == 6
    assert not torch.equal(before.backbone.stem.weight, after.backbone.stem.weight)


def test_a_stop_right_after_a_checkpoint_logs_no_empty_row(tmp_path: Path, image_dir: Path) -> None:
    """Ctrl-C just after the step-3 checkpoint saves again, but the loss log keeps one row per step, each a mean of
    real losses (a row of 0 once made the loss curve fail to draw)."""

    def interrupt_at_checkpoint(report: StepReport) -> None:
        if report.checkpointed:
            raise KeyboardInterrupt

    out = tmp_path / "m.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(TINY_MODEL, CONFIG, image_folder(image_dir, 16), out, device=CPU, on_step=interrupt_at_checkpoint)
    rows = [line.split(",") for line in (tmp_path / "m.log.csv").read_text().splitlines()]
    assert [int(step) for step, _, _ in rows] == [3]
    assert float(rows[0][1]) > 0
    assert read_metadata(out)["training"]["step"] == 3


def test_a_fresh_optimiser_warms_up_again(tmp_path: Path, image_dir: Path) -> None:
    """Resumed from weights at step 3, a fresh AdamW starts its warm-up anew: step 4 runs at lr / warmup."""
    data = image_folder(image_dir, 16)
    out = tmp_path / "m.safetensors"
    config = replace(CONFIG, steps=3, warmup=2)
    train(TINY_MODEL, config, data, out, device=CPU)
    assert read_metadata(state_path_for(out))["optimizer"][0]["lr"] == pytest.approx(config.lr)
    state_path_for(out).unlink()
    train(TINY_MODEL, replace(config, steps=4, warmup=4), data, out, resume=True, device=CPU)
    state = read_metadata(state_path_for(out))
    assert state["optimiser_start"] == 3
    assert state["optimizer"][0]["lr"] == pytest.approx(config.lr / 4)


def test_learning_rate_warms_up_holds_then_decays_to_zero() -> None:
    config = TrainConfig(steps=100, lr=1.0, warmup=10, decay=20)
    rates = [learning_rate(config, step) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10:80] == pytest.approx([1.0] * 70)
    assert rates[80:] == pytest.approx([(100 - step) / 20 for step in range(80, 100)])
    assert learning_rate(config, 100) == 0.0
    assert learning_rate(replace(config, decay=0), 99) == 1.0
    assert learning_rate(config, 50, optimiser_start=45) == pytest.approx(0.6)


def test_a_decayed_run_ends_at_the_last_rate(tmp_path: Path, image_dir: Path) -> None:
    """With --decay 4 the last of 6 steps runs at lr / 4, and its resumed extension decays anew."""
    data = image_folder(image_dir, 16)
    out = tmp_path / "m.safetensors"
    train(TINY_MODEL, replace(CONFIG, decay=4), data, out, device=CPU)
    assert read_metadata(state_path_for(out))["optimizer"][0]["lr"] == pytest.approx(CONFIG.lr / 4)
    train(TINY_MODEL, replace(CONFIG, steps=8, decay=4), data, out, resume=True, device=CPU)
    assert read_metadata(state_path_for(out))["optimizer"][0]["lr"] == pytest.approx(CONFIG.lr / 4)
    assert read_metadata(out)["training"]["decay"] == 4


def test_resume_with_nothing_to_resume(tmp_path: Path, image_dir: Path) -> None:
    with pytest.raises(ValueError, match="nothing to resume"):
        train(TINY_MODEL, CONFIG, image_folder(image_dir, 16), tmp_path / "m.safetensors", resume=True, device=CPU)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path: Path, image_dir: Path) -> None:
    data = image_folder(image_dir, 16)
    out = tmp_path / "m.safetensors"
    train(TINY_MODEL, replace(CONFIG, steps=3), data, out, device=CPU)
    good = out.read_bytes()
    with pytest.raises(TrainingError, match="non-finite loss"):
        train(TINY_MODEL, replace(CONFIG, steps=1000, lr=1e38, warmup=0), data, out, resume=True, device=CPU)
    assert out.read_bytes() == good
    read_checkpoint(out)


def test_two_process_gloo_run_ends_with_identical_weights(tmp_path: Path, image_dir: Path) -> None:
    """torchrun with 2 CPU processes: DDP keeps both ranks' weights identical; only rank 0 writes."""
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, torch
            from safetensors.torch import save_file
            from sda_cli.data import image_folder
            from sda_cli.train import TrainConfig, train
            from conftest import TINY_MODEL
            torch.set_num_threads(1)
            rank = int(os.environ["RANK"])
            config = TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup=1, checkpoint_every=2, seed=3)
            step, ema = train(TINY_MODEL, config, image_folder({str(image_dir)!r}, 16, workers=0),
                              {str(tmp_path / "ddp.safetensors")!r}, device=torch.device("cpu"))
            save_file({{k: v.contiguous() for k, v in ema.backbone.state_dict().items()}},
                      {str(tmp_path)!r} + f"/rank{{rank}}.safetensors")
            """
        )
    )
    tests = Path(__file__).parent
    env = {"PYTHONPATH": f"{tests.parent}:{tests}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    result = subprocess.run([*command, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rank0, rank1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    config = read_metadata(tmp_path / "ddp.safetensors")
    assert config["training"]["world_size"] == 2 and config["training"]["images_seen"] == 4 * 4 * 2


def test_resume_from_weights_alone_builds_a_fresh_optimiser_from_that_step(tmp_path: Path, image_dir: Path) -> None:
    """Without a state file, a resume trains on the model file's weights with an empty AdamW whose warm-up counts
    from the resume step, and a random stream seeded from that step."""
    out = tmp_path / "m.safetensors"
    train(TINY_MODEL, replace(CONFIG, steps=3), image_folder(image_dir, 16), out, device=CPU)
    state_path_for(out).unlink()
    start = _resume(out, log=lambda message: None)
    assert (start.step, start.optimiser_start, start.state, start.weights) == (3, 3, None, out)
    run = _build(start, CONFIG, _Ranks(0, 1, CPU))
    assert run.optimizer.state_dict()["state"] == {}
    shipped, _ = read_checkpoint(out)
    for name, value in shipped.backbone.state_dict().items():
        assert torch.equal(run.unet.state_dict()[name], value), name
        assert torch.equal(run.ema.state_dict()[name], value), name
    assert torch.equal(run.generator.get_state(), torch.Generator().manual_seed(CONFIG.seed + 7919 * 3).get_state())
    assert learning_rate(CONFIG, 3, run.optimiser_start) == pytest.approx(CONFIG.lr / CONFIG.warmup)


def test_resume_from_state_restores_every_part(tmp_path: Path, image_dir: Path) -> None:
    out = tmp_path / "m.safetensors"
    train(TINY_MODEL, replace(CONFIG, steps=3), image_folder(image_dir, 16), out, device=CPU)
    saved = load_file(str(state_path_for(out)))
    start = _resume(out, log=lambda message: None)
    assert (start.step, start.optimiser_start, start.weights) == (3, 0, None)
    run = _build(start, CONFIG, _Ranks(0, 1, CPU))
    ema = run.ema.state_dict()
    for name, value in run.unet.state_dict().items():
        assert torch.equal(value, saved[f"model.{name}"]) and torch.equal(ema[name], saved[f"ema.{name}"]), name
    moments = run.optimizer.state_dict()["state"]
    assert all(torch.equal(moments[0][key], saved[f"optim.0.{key}"]) for key in ("exp_avg", "exp_avg_sq", "step"))
    assert torch.equal(run.generator.get_state(), saved["rng.generator"])


def test_a_step_sets_the_rate_and_moves_the_ema_by_its_decay(tmp_path: Path, image_dir: Path) -> None:
    """Step s + 1 runs at learning_rate(s) and ends with θ̄ ← θ̄ + (1 − d)(θ − θ̄), d = min(ema_decay, (1 + s)/(10 + s))
    at the new step: 2/11 after the first step, ema_decay once it is the smaller."""
    data = image_folder(image_dir, 16)
    for config, step, decay in ((CONFIG, 0, 2 / 11), (replace(CONFIG, ema_decay=0.3), 5, 0.3)):
        run = _build(_Start(TINY_MODEL, step=step), config, _Ranks(0, 1, CPU))
        before = [p.detach().clone() for p in run.ema_params]
        loss = _step(run, data, config, step, tmp_path / "m.safetensors")
        assert loss > 0
        assert run.optimizer.param_groups[0]["lr"] == learning_rate(config, step)
        assert any(not torch.equal(new, old) for old, new in zip(before, run.params, strict=True))
        for old, new, ema in zip(before, run.params, run.ema_params, strict=True):
            assert torch.equal(ema, torch.lerp(old, new.detach(), 1 - decay))


def test_sigterm_writes_a_checkpoint_and_stops(tmp_path: Path, image_dir: Path) -> None:
    """SIGTERM during step 2 (of 6, checkpoints every 3) stops after it, with both files and a log row at step 2."""
    out = tmp_path / "m.safetensors"
    previous = signal.getsignal(signal.SIGTERM)

    def terminate_at_step_2(report: StepReport) -> None:
        if report.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    step, _ = train(TINY_MODEL, CONFIG, image_folder(image_dir, 16), out, device=CPU, on_step=terminate_at_step_2)
    assert step == 2
    assert read_metadata(out)["training"]["step"] == 2 and read_metadata(state_path_for(out))["step"] == 2
    assert [row.split(",")[0] for row in (tmp_path / "m.log.csv").read_text().splitlines()] == ["2"]
    assert signal.getsignal(signal.SIGTERM) is previous


def test_an_unknown_precision_names_the_option() -> None:
    with pytest.raises(ValueError, match="--precision must be auto, bf16, fp16 or fp32"):
        TrainConfig(precision="fp8")
