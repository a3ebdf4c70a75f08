"""Fit against generalisation of the photo model: denoising PSNR on crops of its training photos and of McMaster.

What. Whether the photo model's shortfall on McMaster comes from its data (a network that learns its 400 training
photos by heart: the PSNR on training crops rises while the PSNR on unseen photos stalls) or from its capacity and
training length (both rise together). Each ``--models NAME=SPEC`` (a checkpoint file, or ``REV:PATH``, the file
``PATH`` as committed at git revision ``REV``; default: every committed version of ``checkpoints/photo.safetensors``,
and the file itself when it differs from the last commit's)
denoises the same ``--count`` fixed crops of BSDS400 (the training photos) and of McMaster18 (never trained on) at
each ``--sigmas`` level, with the posterior mean (``mmse``). One row per model, in the order of its training step,
with the mean PSNR of each set and level, and the change at the middle level since the row before: a model that
memorises gains more on BSDS400 than on McMaster.

How. Crops of ``--crop`` × ``--crop`` pixels at places drawn by ``numpy.random.default_rng(0)`` (a photo, then a
corner), the same for every model; Gaussian noise from ``torch.Generator().manual_seed(level)`` in float (not
clipped nor quantised: the model alone, without the 8-bit file); ``sda_cli.denoise(..., clipped="off")``, clamped to
[0, 1]; PSNR per crop (peak 1) then averaged. The training crops are not augmented (no flips nor rotations).
Run from the repository root; each model took about 30 s on 1 thread of an AVX-512 EPYC beside a training run:

    python benchmarks/photo_fit.py --threads 1
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import torch
from _common import PHOTOS, ROOT, arguments, header, parse, psnr, report, table, work_folder
from PIL import Image

from sda_cli import denoise, load_model
from sda_cli.checkpoint import read_metadata
from sda_cli.images import PICTURE_EXTENSIONS

TITLE = "Fit against generalisation of the photo model: training crops against McMaster crops"
"""The heading of this script's table, and of its section of ``benchmarks/RESULTS.md``."""

SETS = {"BSDS400 (train)": PHOTOS / "bsds400", "McMaster18": PHOTOS / "mcmaster18"}
"""The training photos and the test photos (see ``shared/data/README.md``)."""

SHIPPED = "checkpoints/photo.safetensors"


def parse_args() -> argparse.Namespace:
    parser = arguments(__doc__, models=None, count=48, count_help="crops per set", threads=1, work=True)
    parser.add_argument("--sigmas", nargs="+", type=float, default=[15.0, 25.0, 50.0], help="levels in /255")
    parser.add_argument("--crop", type=int, default=128, help="side of the crops in pixels")
    return parse(parser)


def committed_versions() -> dict[str, str]:
    """``{short revision: 'REV:checkpoints/photo.safetensors'}`` for each commit that changed the shipped file, and
    ``{'working tree': path}`` when the file differs from the last commit's."""
    log = ["git", "-C", str(ROOT), "log", "--format=%h", "--", SHIPPED]
    revisions = subprocess.run(log, check=True, capture_output=True, text=True).stdout.split()
    versions = {revision: f"{revision}:{SHIPPED}" for revision in reversed(revisions)}
    changed = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", SHIPPED], check=False)
    if changed.returncode:
        versions["working tree"] = SHIPPED
    return versions


def resolve(name: str, spec: str, work: Path) -> Path:
    """The checkpoint file of ``spec``: a path, or ``REV:PATH`` written out of git into ``work``."""
    if Path(spec).exists() or ":" not in spec:
        return Path(spec)
    path = work / f"{name}.safetensors"
    path.write_bytes(subprocess.run(["git", "-C", str(ROOT), "show", spec], check=True, capture_output=True).stdout)
    return path


def photo_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PICTURE_EXTENSIONS)


def crops(folder: Path, count: int, side: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` crops ``(count, 3, side, side)`` in [0, 1] from the photos of ``folder`` (sorted by name)."""
    files = photo_files(folder)
    out = []
    for _ in range(count):
        image = np.asarray(Image.open(files[rng.integers(len(files))]).convert("RGB"))
        top, left = rng.integers(image.shape[0] - side + 1), rng.integers(image.shape[1] - side + 1)
        out.append(torch.from_numpy(image[top : top + side, left : left + side].copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def denoised(model: torch.nn.Module, clean: torch.Tensor, level: float) -> torch.Tensor:
    """The ``mmse`` estimate, clamped to [0, 1], of ``clean`` plus float Gaussian noise of ``level``/255 (seeded by
    the level, so every model sees the same noise)."""
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(round(level)))
    with torch.no_grad():
        estimate, _ = denoise(model, clean + level / 255 * noise, level / 255, clipped="off")
    return estimate.clamp(0, 1)


def mean_psnr(model: torch.nn.Module, clean: torch.Tensor, level: float) -> float:
    """Mean PSNR of :func:`denoised`."""
    return float(psnr(denoised(model, clean, level), clean).mean())


def main() -> None:
    args = parse_args()
    specs = args.models or committed_versions()
    rng = np.random.default_rng(0)
    data = {name: crops(folder, args.count, args.crop, rng) for name, folder in SETS.items()}
    middle = args.sigmas[len(args.sigmas) // 2]
    results = []
    with work_folder(args.work, "sda-fit-") as work:
        for name, spec in specs.items():  # a name is kept in the table; the spec (file or REV:PATH) in the header
            path = resolve(name, spec, work)
            model = load_model(path, precision="fp32")
            step = int(read_metadata(path)["training"]["step"])
            scores = {(s, level): mean_psnr(model, clean, level) for s, clean in data.items() for level in args.sigmas}
            results.append((step, name, spec, scores))
            print(name, step, " ".join(f"{v:.2f}" for v in scores.values()), flush=True)
    results.sort(key=lambda result: result[0])
    rows, before = [], None
    for step, name, _, scores in results:
        change = "—"
        if before is not None:
            train, test = (scores[s, middle] - before[s, middle] for s in SETS)
            change = f"{train:+.2f} / {test:+.2f}"
        rows.append([name, str(step), *(f"{value:.2f}" for value in scores.values()), change])
        before = scores
    columns = [f"{s} σ {level:g}" for s in SETS for level in args.sigmas]
    text = "\n".join(
        [
            header(TITLE, "; ".join(f"{spec} (step {step})" for step, _, spec, _ in results)),
            f"{args.count} fixed {args.crop}×{args.crop} crops of each set, float Gaussian noise at each σ (/255), "
            "`mmse` at float32, mean PSNR (dB). Last column: change at σ "
            f"{middle:g} since the row before, training crops / McMaster crops (memorisation: the first grows "
            "faster than the second).",
            "",
            table(["model", "step", *columns, f"Δ σ {middle:g} train / test"], rows),
        ]
    )
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
