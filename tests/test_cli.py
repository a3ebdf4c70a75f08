"""Every command end to end, as a user runs it, on the tiny model trained by the session fixture.

Most runs call ``sda_cli.cli.main`` in this process (``run_sda`` in conftest.py: the same argument parsing, one-line
errors and exit codes as the ``sda`` script); a few start a new Python (``sda_process``), as a user's shell does, to
check the exit codes of the real process and that a run in a new process writes the same values as one in this one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Run, run_sda
from PIL import Image
from safetensors.torch import load_file

from sda_cli.checkpoint import read_metadata
from sda_cli.cli import command_seed

sda = run_sda


def sda_process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m sda_cli ARGS`` in a new process (the timeout only guards against a hang)."""
    command = [sys.executable, "-m", "sda_cli", *map(str, args)]
    # one intra-op thread, as in conftest: on a busy machine, threads waiting for each other are many times slower
    env = {k: v for k, v in os.environ.items() if k != "SDA_DEBUG"} | {"OMP_NUM_THREADS": "1", "SDA_NO_DOWNLOAD": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def ok(*args: str | Path) -> Run:
    result = sda(*args)
    assert result.returncode == 0, result.stderr
    return result


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64) / 255


def test_train_writes_a_model_that_info_describes(tmp_path: Path, image_dir: Path) -> None:
    out = tmp_path / "m.safetensors"
    ok(
        "train",
        "--dataset",
        image_dir,
        "--image-size",
        "16",
        "--widths",
        "8,16",
        "--blocks",
        "1",
        "--attention",
        "1",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "2",
        "-o",
        out,
        "-q",
    )
    assert out.is_file() and out.with_name("m.state.safetensors").is_file()
    info = ok("info", out).stdout
    assert '"widths": [\n      8,\n      16\n    ]' in info and '"step": 4' in info
    ok("train", "--dataset", image_dir, "--image-size", "16", "--steps", "6", "-o", out, "--resume", "-q")
    assert read_metadata(out)["training"]["step"] == 6


def test_noise_adds_the_right_amount_and_is_seeded(tmp_path: Path) -> None:
    clean = np.full((64, 64, 3), 128, np.uint8)
    Image.fromarray(clean).save(tmp_path / "grey.png")
    ok("noise", tmp_path / "grey.png", "--sigma", "25/255", "-o", tmp_path / "a.npy", "--seed", "3")
    ok("noise", tmp_path / "grey.png", "--sigma", "25/255", "-o", tmp_path / "b.npy", "--seed", "3")
    ok("noise", tmp_path / "grey.png", "--sigma", "25/255", "-o", tmp_path / "c.png", "--seed", "4")
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (64, 64, 3) and a.dtype == np.float32
    assert np.array_equal(a, b)
    residual = a - 128 / 255
    assert abs(residual.std() - 25 / 255) < 4 * (25 / 255) / np.sqrt(2 * residual.size)
    assert abs(residual.mean()) < 4 * (25 / 255) / np.sqrt(residual.size)
    assert not np.array_equal(np.round(np.clip(a, 0, 1) * 255), pixels(tmp_path / "c.png") * 255)


def test_each_command_draws_from_its_own_stream_for_one_seed(tmp_path: Path) -> None:
    """``sda noise --seed 0`` then ``sda denoise --seed 0``: the sampler's noise must not repeat the observation's."""
    seeds = {command: command_seed(0, command) for command in ("noise", "denoise", "sample")}
    assert len(set(seeds.values())) == 3 and all(0 <= s < 2**63 for s in seeds.values())
    assert command_seed(0, "denoise") == command_seed(0, "denoise") != command_seed(1, "denoise")
    np.save(tmp_path / "zero.npy", np.zeros((32, 32, 3), np.float32))
    ok("noise", tmp_path / "zero.npy", "--sigma", "1", "-o", tmp_path / "n.npy", "--seed", "0")
    drawn = np.load(tmp_path / "n.npy").transpose(2, 0, 1).ravel()
    for command in ("denoise", "sample"):
        stream = torch.randn(drawn.size, generator=torch.Generator().manual_seed(seeds[command])).numpy()
        assert abs(np.corrcoef(drawn, stream)[0, 1]) < 4 / np.sqrt(drawn.size)


def test_noise_then_denoise_mmse_improves_and_is_deterministic(
    tmp_path: Path, tiny_model: Path, image_dir: Path
) -> None:
    """In new processes, as from a shell; the same denoise in this process writes the same values."""
    source = image_dir / "img_000.png"
    for args in [
        ("noise", source, "--sigma", "0.2", "-o", tmp_path / "noisy.npy", "--seed", "0"),
        ("denoise", tmp_path / "noisy.npy", "--sigma", "0.2", "-o", tmp_path / "out.npy", "--model", tiny_model),
    ]:
        result = sda_process(*args)
        assert result.returncode == 0, result.stderr
    ok("denoise", tmp_path / "noisy.npy", "--sigma", "0.2", "-o", tmp_path / "again.npy", "--model", tiny_model)
    clean, noisy = pixels(source), np.load(tmp_path / "noisy.npy")
    out = np.load(tmp_path / "out.npy")
    assert out.shape == clean.shape
    assert np.array_equal(out, np.load(tmp_path / "again.npy"))
    # even a barely trained model shrinks towards its data: less error than the noisy input
    assert np.mean((out - clean) ** 2) < np.mean((noisy - clean) ** 2)


def test_denoise_posterior_is_seeded(tmp_path: Path, tiny_model: Path, image_dir: Path) -> None:
    source = image_dir / "img_001.png"
    ok("noise", source, "--sigma", "0.1", "-o", tmp_path / "noisy.png", "--seed", "0")
    runs = {}
    for name, seed in [("a", "5"), ("b", "5"), ("c", "6")]:
        ok(
            "denoise",
            tmp_path / "noisy.png",
            "--sigma",
            "0.1",
            "-o",
            tmp_path / f"{name}.png",
            "--model",
            tiny_model,
            "--method",
            "posterior",
            "--steps",
            "4",
            "--seed",
            seed,
        )
        runs[name] = (tmp_path / f"{name}.png").read_bytes()
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]


def test_folders_keep_names_any_size_grey_and_alpha(tmp_path: Path, tiny_model: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (13, 21), dtype=np.uint8), "L").save(inputs / "grey.png")
    rgba = rng.integers(0, 255, (10, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(inputs / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(inputs / "rgb.png")
    ok("denoise", inputs, "--sigma", "0.1", "-o", tmp_path / "out", "--model", tiny_model, "-q")
    grey, alpha = Image.open(tmp_path / "out" / "grey.png"), Image.open(tmp_path / "out" / "alpha.png")
    assert grey.mode == "L" and grey.size == (21, 13)
    assert alpha.mode == "RGBA" and alpha.size == (7, 10)
    assert np.array_equal(np.asarray(alpha)[..., 3], rgba[..., 3])
    assert Image.open(tmp_path / "out" / "rgb.png").size == (16, 16)


def test_sixteen_bit_output(tmp_path: Path, tiny_model: Path, image_dir: Path) -> None:
    ok("noise", image_dir / "img_002.png", "--sigma", "0.05", "-o", tmp_path / "n16.png", "--bits", "16", "--seed", "1")
    assert Image.open(tmp_path / "n16.png").info.get("dpi") is None
    ok("denoise", tmp_path / "n16.png", "--sigma", "0.05", "-o", tmp_path / "d16.png", "--model", tiny_model)
    with open(tmp_path / "d16.png", "rb") as handle:
        header = handle.read(32)
    assert header[24] == 16  # IHDR bit depth: the 16-bit input gives a 16-bit output


def test_sample_grid_and_folder_are_seeded(tmp_path: Path, tiny_model: Path) -> None:
    result = ok("sample", "-n", "4", "-o", tmp_path / "grid.png", "--model", tiny_model, "--steps", "3", "--seed", "2")
    assert "network evaluations" in result.stderr
    ok("sample", "-n", "4", "-o", tmp_path / "again.png", "--model", tiny_model, "--steps", "3", "--seed", "2")
    assert (tmp_path / "grid.png").read_bytes() == (tmp_path / "again.png").read_bytes()
    assert Image.open(tmp_path / "grid.png").size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)
    ok("sample", "-n", "3", "-o", tmp_path / "many", "--model", tiny_model, "--steps", "2", "--sampler", "ddim")
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == [
        "grid.png",
        "sample_0.png",
        "sample_1.png",
        "sample_2.png",
    ]


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["noise", "{img}", "--sigma", "-0.1", "-o", "{tmp}/x.png"], "--sigma must be a positive", 2),
        (["noise", "{img}", "--sigma", "nan", "-o", "{tmp}/x.png"], "--sigma must be a positive", 2),
        (["noise", "{img}", "--sigma", "0", "-o", "{tmp}/x.png"], "--sigma must be a positive", 2),
        (["noise", "{img}", "--sigma", "1/0", "-o", "{tmp}/x.png"], "--sigma takes a number", 2),
        (["noise", "{img}", "--sigma", "25", "-o", "{tmp}/x.png"], "did you mean 25/255", 2),
        (["noise", "{tmp}/absent.png", "--sigma", "0.1", "-o", "{tmp}/x.png"], "absent.png", 1),
        (["noise", "{img}", "--sigma", "0.1", "-o", "{img}"], "would overwrite its input", 2),
        (
            ["denoise", "{img}", "--sigma", "0.1", "-o", "{tmp}/x.png", "--model", "{tmp}/none.safetensors"],
            "no model at",
            2,
        ),
        (
            ["denoise", "{img}", "--sigma", "0.1", "-o", "{tmp}/x.png", "--model", "{img}"],
            "not a readable safetensors",
            1,
        ),
        (["train", "--dataset", "{tmp}", "-o", "{tmp}/m.safetensors"], "no images found", 1),
        (["train", "--widths", "a,b"], "--widths takes comma-separated", 2),
        (["noise", "{img}", "--sigma", "inf", "-o", "{tmp}/x.png"], "--sigma must be a positive finite", 2),
        (["noise", "{img}", "--sigma", "1/", "-o", "{tmp}/x.png"], "--sigma takes a number such as", 2),
        (["noise", "{img}", "--sigma", "a/b", "-o", "{tmp}/x.png"], "--sigma takes a number such as", 2),
        (["noise", "{img}", "--sigma", "0.1", "--seed", str(10**30), "-o", "{tmp}/x.png"], "'--seed'", 2),
        (["noise", "{img}", "--sigma", "0.1", "--colour", "-o", "{tmp}/x.png"], "No such option: --colour", 2),
        (["denoise", "{img}", "--sigma", ".1", "--method", "mean", "--steps", "0", "-o", "{tmp}/x.png"], "[1, 1", 2),
        (["denoise", "{img}", "--sigma", "0.1", "--steps", "2", "-o", "{tmp}/x.png"], "mmse takes no option steps", 2),
        (["denoise", "{img}", "--sigma", "0.1", "--device", "tpu", "-o", "{tmp}/x.png"], "unknown device 'tpu'", 2),
        (["sample", "-n", "0", "-o", "{tmp}/s.png"], "'-n'", 2),
        (["sample", "-n", str(10**9), "-o", "{tmp}/s.png"], "'-n'", 2),
    ],
)
def test_bad_input_gets_one_line_and_exit_code(
    tmp_path: Path, image_dir: Path, args: list[str], message: str, code: int
) -> None:
    filled = [a.format(img=image_dir / "img_000.png", tmp=tmp_path) for a in args]
    result = sda(*filled)
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["noise", "{img}", "--sigma", "25", "-o", "{tmp}/x.png"], "did you mean 25/255", 2),
        (["noise", "{tmp}/absent.png", "--sigma", "0.1", "-o", "{tmp}/x.png"], "absent.png", 1),
    ],
)
def test_a_new_process_exits_with_the_code_and_one_line(
    tmp_path: Path, image_dir: Path, args: list[str], message: str, code: int
) -> None:
    """The exit code as a shell sees it, from ``python -m sda_cli``."""
    result = sda_process(*(a.format(img=image_dir / "img_000.png", tmp=tmp_path) for a in args))
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert result.stdout == ""


def test_one_bad_file_among_many_is_skipped_and_reported(tmp_path: Path, image_dir: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.png").write_bytes((image_dir / "img_000.png").read_bytes())
    (inputs / "b.png").write_bytes(b"not a png")
    (inputs / "c.png").write_bytes((image_dir / "img_001.png").read_bytes())
    result = sda("noise", inputs, "--sigma", "0.1", "-o", tmp_path / "out", "-q")
    assert result.returncode == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    assert "b.png" in result.stderr and "1 of 3 files failed" in result.stderr


def test_train_is_reproducible_and_records_its_seed(tmp_path: Path, image_dir: Path) -> None:
    args = ["--dataset", image_dir, "--image-size", "16", "--widths", "8,16", "--blocks", "1", "--attention", "1"]
    for name in ("a", "b"):
        ok("train", *args, "--steps", "3", "--batch-size", "4", "--seed", "1", "-o", tmp_path / f"{name}.safetensors")
    for suffix in (".safetensors", ".state.safetensors"):
        a, b = load_file(tmp_path / f"a{suffix}"), load_file(tmp_path / f"b{suffix}")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), suffix
    assert read_metadata(tmp_path / "a.safetensors")["training"]["seed"] == 1


@pytest.mark.parametrize("command", ["noise", "sample"])
def test_verbose_prints_the_drawn_seed_that_repeats_the_run(
    command: str, tmp_path: Path, tiny_model: Path, image_dir: Path
) -> None:
    if command == "noise":
        args = ["noise", image_dir / "img_000.png", "--sigma", "0.1"]
    else:
        args = ["sample", "-n", "2", "--steps", "2", "--model", tiny_model]
    first = ok(*args, "-o", tmp_path / "first.png", "--verbose")
    seed = re.search(r"seed: (\d+) \(the same command with --seed \1 repeats this run\)", first.stderr)
    assert seed is not None, first.stderr
    ok(*args, "-o", tmp_path / "again.png", "--seed", seed.group(1))
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "again.png").read_bytes()


def test_the_shipped_model_denoises_the_example_image(tmp_path: Path) -> None:
    """The README's quick start on the shipped checkpoint: the MMSE estimate is far closer to the clean image."""
    root = Path(__file__).resolve().parents[1]
    example = root / "checkpoints" / "example.png"
    ok("noise", example, "--sigma", "0.2", "--seed", "0", "-o", tmp_path / "noisy.png")
    ok("denoise", tmp_path / "noisy.png", "--sigma", "0.2", "-o", tmp_path / "denoised.png")
    clean = pixels(example)

    def psnr(path: Path) -> float:
        return float(10 * np.log10(1 / np.mean((pixels(path) - clean) ** 2)))

    # about 14 dB of noise; the model trained on CIFAR-10 brings it above 20 dB
    assert psnr(tmp_path / "noisy.png") < 15 and psnr(tmp_path / "denoised.png") > 20
