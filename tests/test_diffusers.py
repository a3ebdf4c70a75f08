"""A pretrained diffusers DDPM as a backbone (sda_cli.diffusers), checked against diffusers' own schedulers.

No download: each test builds a tiny ``UNet2DModel`` with random weights and saves it as a user's folder would be.
The arithmetic of the reference is diffusers' (``DDPMScheduler.step``, ``DDIMScheduler``); ours must give the same
numbers through our denoiser, samplers and command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_sda

from sda_cli.checkpoint import ModelChoiceError
from sda_cli.models import load_model
from sda_cli.sampler import DDIM, Ancestral

diffusers = pytest.importorskip("diffusers")

STEPS = 40  # the tiny models' num_train_timesteps: every one of them is checked
SIZE = 16


def tiny_unet(out_channels: int = 3, seed: int = 0) -> torch.nn.Module:
    """A two-level UNet2DModel with attention, its weights drawn at random (larger than diffusers' initialisation,
    whose zeroed layers would make the output trivial)."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=out_channels, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8,
    )  # fmt: skip
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return unet.eval()


def save_pipeline(folder: Path, *, prediction_type: str = "epsilon", beta_schedule: str = "linear",
                  learned: bool = False) -> Path:  # fmt: skip
    """A DDPM pipeline folder (model_index.json, unet/, scheduler/), as ``DDPMPipeline.save_pretrained`` writes it."""
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=STEPS, beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=False,
        variance_type="learned_range" if learned else "fixed_small", beta_start=1e-4, beta_end=0.2,
    )  # fmt: skip
    diffusers.DDPMPipeline(unet=tiny_unet(6 if learned else 3), scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pipeline(tmp_path_factory.mktemp("ddpm") / "pipeline")


def reference(folder: Path) -> tuple[torch.nn.Module, dict]:
    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    return unet, json.loads((folder / "scheduler" / "scheduler_config.json").read_text())


CASES = [
    ("epsilon", "linear", False),
    ("v_prediction", "scaled_linear", False),
    ("sample", "squaredcos_cap_v2", False),
    ("epsilon", "squaredcos_cap_v2", True),
]


@pytest.mark.parametrize("prediction_type, beta_schedule, learned", CASES)
def test_mean_equals_diffusers_pred_original_sample_at_every_step(
    tmp_path: Path, prediction_type: str, beta_schedule: str, learned: bool
) -> None:
    folder = save_pipeline(tmp_path / "p", prediction_type=prediction_type, beta_schedule=beta_schedule,
                           learned=learned)  # fmt: skip
    model = load_model(folder, precision="fp32")
    unet, config = reference(folder)
    scheduler = diffusers.DDPMScheduler.from_config(config)
    torch.manual_seed(1)
    x = torch.randn(STEPS, 3, SIZE, SIZE)
    with torch.no_grad():
        ours = model(x, torch.arange(STEPS, dtype=torch.float32) / (STEPS - 1))
        theirs = torch.stack(
            [
                scheduler.step(unet(x[k : k + 1], k).sample, k, x[k : k + 1]).pred_original_sample[0]
                for k in range(STEPS)
            ]
        )
    # to 1e-5 of each step's largest value (at least 1): x_hat = (x_k - sqrt(1 - a_k) eps) / sqrt(a_k) reaches 30 at
    # the noisiest steps, where float32 rounding alone differs by 2e-6 per operation
    scale = theirs.flatten(1).abs().amax(1).clamp(min=1).reshape(-1, 1, 1, 1)
    assert theirs.abs().max() > 1  # the check is not a comparison of two near-zero tensors
    assert ((ours - theirs).abs() <= 1e-5 * scale).all(), ((ours - theirs).abs() / scale).max()


def test_ddim_on_the_models_grid_equals_diffusers_ddim(pipeline: Path) -> None:
    model = load_model(pipeline, precision="fp32")
    unet, config = reference(pipeline)
    scheduler = diffusers.DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(8)
    start = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    theirs = start.clone()
    with torch.no_grad():
        for k in scheduler.timesteps:
            theirs = scheduler.step(unet(theirs, k).sample, k, theirs, eta=0.0).prev_sample
        times = [int(k) / (STEPS - 1) for k in scheduler.timesteps]
        ours = model(DDIM(model).run(start, times), times[-1])  # the last step, to alpha = 1, is x_hat
    assert len(times) == 8 and times[-1] == 0.0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_ancestral_step_has_the_law_of_ddpm_scheduler(pipeline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same mean exactly (noise set to zero in both), and our variance is DDPMScheduler's fixed_small one,
    the posterior variance of q(x_{k-1} | x_k, x) (Ho et al., 2020, eq. 7)."""
    model = load_model(pipeline, precision="fp32")
    unet, config = reference(pipeline)
    scheduler = diffusers.DDPMScheduler.from_config(config)
    monkeypatch.setattr(diffusers.schedulers.scheduling_ddpm, "randn_tensor", lambda shape, **_: torch.zeros(shape))
    sampler = Ancestral(model)
    monkeypatch.setattr(sampler, "noise", torch.zeros_like)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    for k in (STEPS - 1, STEPS // 2, 1):
        t, s = k / (STEPS - 1), (k - 1) / (STEPS - 1)
        with torch.no_grad():
            theirs = scheduler.step(unet(x, k).sample, k, x).prev_sample
            ours = sampler.step(x, t, s)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        alpha_t, sigma_t, alpha_s, sigma_s = sampler.coefficients(t, s)
        ours_variance = sigma_s**2 * (1 - ((sigma_s / alpha_s) / (sigma_t / alpha_t)) ** 2)
        assert ours_variance == pytest.approx(float(scheduler._get_variance(k)), rel=1e-4)


def test_off_the_grid_the_mean_is_continuous_and_interpolated(pipeline: Path) -> None:
    model = load_model(pipeline, precision="fp32")
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    k = 17
    at = [(k + d) / (STEPS - 1) for d in (-1e-4, 0.0, 1e-4, 0.5, 1.0)]
    with torch.no_grad():
        before, grid, after, middle, next_grid = (model(x, t) for t in at)
    assert (before - grid).abs().max() < 1e-2 and (after - grid).abs().max() < 1e-2
    assert (middle - grid).abs().max() > 10 * (after - grid).abs().max()  # it does move between grid points
    schedule = model.schedule
    halfway = (schedule.log_ratios[k] + schedule.log_ratios[k + 1]) / 2
    assert float(schedule.index_of_log_ratio(halfway)) == pytest.approx(k + 0.5, abs=1e-9)
    assert float(schedule.time_of_ratio(torch.exp(halfway))) == pytest.approx(at[3], abs=1e-12)
    assert torch.isfinite(middle).all() and not torch.equal(middle, next_grid)


def test_a_unet_folder_with_its_scheduler_config_beside_it(pipeline: Path, tmp_path: Path) -> None:
    folder = tmp_path / "unet-only"
    folder.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        (folder / name).write_bytes((pipeline / "unet" / name).read_bytes())
    (folder / "scheduler_config.json").write_bytes((pipeline / "scheduler" / "scheduler_config.json").read_bytes())
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(
            load_model(folder, precision="fp32")(x, 0.5), load_model(pipeline, precision="fp32")(x, 0.5)
        )


def test_the_commands_run_on_a_diffusers_folder(pipeline: Path, image_dir: Path, tmp_path: Path) -> None:
    image = image_dir / "img_000.png"  # 16×16, the model's size
    runs = {
        "sample": ["sample", "-n", "2", "--steps", "3", "-o", tmp_path / "s.png"],
        "denoise": ["denoise", image, "--sigma", "0.1", "-o", tmp_path / "d.png"],
        "posterior": [
            "denoise",
            image,
            "--sigma",
            "0.1",
            "--method",
            "posterior",
            "--steps",
            "3",
            "-o",
            tmp_path / "p.png",
        ],
        "restore": ["restore", image, "--blur", "1", "--sigma", "0.02", "--steps", "3", "-o", tmp_path / "r.png"],
    }
    for name, args in runs.items():
        result = run_sda(*args, "--model", pipeline, "--seed", "0", "-q")
        assert result.returncode == 0, (name, result.stderr)
    assert all((tmp_path / f"{name}.png").is_file() for name in "sdpr")
    info = run_sda("info", pipeline)
    described = json.loads(info.stdout)
    assert info.returncode == 0 and described["kind"] == "diffusers DDPM" and described["num_train_timesteps"] == STEPS


def test_images_larger_and_smaller_than_the_model_are_tiled_and_padded(pipeline: Path) -> None:
    from sda_cli.restore import denoise
    from sda_cli.tiles import default_tile

    model = load_model(pipeline, precision="fp32")
    assert default_tile(model) == (SIZE, SIZE // 8, 1)  # tiles of the model's own size
    for height, width in ((40, 24), (8, 12)):
        pixels = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(5))
        estimate, _ = denoise(model, pixels, 0.1, seed=0)
        assert estimate.shape == pixels.shape and torch.isfinite(estimate).all()
    with pytest.raises(ValueError, match="needs at least 6 pixels per side"):
        denoise(model, torch.rand(1, 3, 4, 16), 0.1, seed=0)


def _bad_folders(root: Path, pipeline: Path) -> dict[str, tuple[Path | str, str]]:
    pickled = root / "pickled"
    (pickled / "unet").mkdir(parents=True)
    (pickled / "unet" / "config.json").write_bytes((pipeline / "unet" / "config.json").read_bytes())
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    (pickled / "scheduler").mkdir()
    (pickled / "scheduler" / "scheduler_config.json").write_bytes(
        (pipeline / "scheduler" / "scheduler_config.json").read_bytes()
    )
    latent = root / "latent"
    latent.mkdir()
    (latent / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline", "vqvae": [], "unet": []}))
    conditional = root / "conditional"
    conditional.mkdir()
    (conditional / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (conditional / "scheduler_config.json").write_text(json.dumps({"num_train_timesteps": 1000}))
    no_scheduler = root / "no-scheduler"
    no_scheduler.mkdir()
    (no_scheduler / "config.json").write_bytes((pipeline / "unet" / "config.json").read_bytes())
    score_sde = root / "score-sde"
    score_sde.mkdir()
    (score_sde / "config.json").write_bytes((pipeline / "unet" / "config.json").read_bytes())
    (score_sde / "scheduler_config.json").write_text(json.dumps({"_class_name": "ScoreSdeVeScheduler"}))
    empty = root / "empty"
    empty.mkdir()
    return {
        "pickle weights": (pickled, "a pickle that can run code when loaded"),
        "latent model": (latent, "is a latent diffusion model"),
        "conditional unet": (conditional, "UNet2DConditionModel is a conditional UNet"),
        "no scheduler config": (no_scheduler, "no scheduler config beside the UNet"),
        "score sde": (score_sde, "variance-exploding score-SDE scheduler"),
        "not a model folder": (empty, "not a diffusers model folder"),
        "id not in the cache": ("someone/ddpm-nowhere", "huggingface-cli download someone/ddpm-nowhere --local-dir"),
    }


def test_bad_folders_and_ids_get_one_line_and_exit_code_2(
    pipeline: Path, image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for case, (model, message) in _bad_folders(tmp_path, pipeline).items():
        out = tmp_path / "out.png"
        result = run_sda("denoise", image_dir / "img_000.png", "--sigma", "0.1", "-o", out, "--model", model)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, (case, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (case, result.stderr)
        assert not out.exists()
    with pytest.raises(ModelChoiceError, match="a pickle"):
        load_model(tmp_path / "pickled")


def test_nothing_imports_diffusers_unless_a_diffusers_model_is_asked_for(image_dir: Path, tmp_path: Path) -> None:
    code = (
        "import sys; from sda_cli.cli import main; sys.argv = ['sda', 'denoise', sys.argv[1], '--sigma', '0.1', "
        "'-o', sys.argv[2], '--model', 'cifar10', '-q']\n"
        "try:\n    main()\nexcept SystemExit as end:\n    assert end.code == 0, end.code\n"
        "assert 'diffusers' not in sys.modules and 'huggingface_hub' not in sys.modules, 'imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(image_dir / "img_000.png"), str(tmp_path / "x.png")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
