"""Photo denoising through the real command line: each sda model against CBM3D on the 18 McMaster photos.

What. For each ``--sigmas`` level S (in 0-255 units: S/255 in pixel units; default 15, 25, 50), one table with a
row per method: the noisy input, CBM3D, and ``sda denoise`` (mmse) with each ``--models NAME=PATH`` (default
``cifar10=checkpoints/cifar10.safetensors``, plus ``photo=checkpoints/photo.safetensors`` when that file exists).
Columns: mean PSNR (dB, peak 1 on [0, 1] pixels, per image then averaged), mean SSIM (scikit-image,
``data_range=1, channel_axis=2``), seconds per megapixel and peak resident memory of the command. Below the tables,
the checks of the issue "Real photos: a photo prior", with PASS/FAIL, computed from the PSNRs as the tables show
them (2 decimals): at 25/255 and 50/255 the photo model at least 0.3 dB above the cifar10 model and at least 0.5 dB
above CBM3D; at 15/255 the photo model no worse than either (the checks need models named photo and cifar10).
With ``--sigma-auto`` the first model also denoises the same files with ``--sigma auto``: one more row, whose last
column is the mean absolute error of the sigma the command estimated ("estimated sigma X" on its stderr), in /255.

How. The first ``--count`` McMaster photos (500 × 500 RGB 8-bit TIFF, in the natural order of their names: 1, 2,
…, 18) are saved as PNGs. For each level, ``python -m sda_cli noise CLEAN_FOLDER --sigma S/255 --seed 0 -o NOISY
-q`` makes the noisy 8-bit PNGs (clipped and quantised) once; one draw runs through the files in order, so the
first N photos get the same noise whatever ``--count``. Every method denoises THE SAME noisy files and writes 8-bit
PNGs, and the metrics are measured on those files against the clean PNGs:

* sda: ``python -m sda_cli denoise NOISY --sigma S/255 --model PATH -o OUT --method mmse --precision fp32 -q``
  (plus ``--tile T`` when given);
* CBM3D: ``bm3d.bm3d_rgb(noisy, sigma_psd=S/255)`` (the true sigma; bm3d 4 from PyPI), clipped to [0, 1] and
  rounded to 8 bits, in a small Python command of its own (``python -c``) over the same folder.

Every method is one fresh process, timed and measured the same way (``_common.run``): seconds per megapixel is the
wall time of the whole command (process start, imports, model load, reading and writing the files: nothing
subtracted) over the megapixels denoised; peak memory is that command's peak resident set (with the Python
interpreter and torch or numpy in it), ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a small process that runs it
alone. Commands run with ``OMP_NUM_THREADS=--threads``. A command that fails gives its row ``n/a`` with the command's
error line, and the script goes on.

With ``--reuse`` (and ``--work``), a method whose output folder holds a ``run.json`` written by an earlier run of
the same command at the same ``--threads``, on noisy files, a model file and (for sda) ``sda_cli`` sources with the
same bytes (SHA-256), or (for CBM3D) with the same ``bm3d`` version, is not run again: its files are scored again
and its s/MP and memory are the earlier run's. This spares CBM3D's half hour when only a model changes. The table says
which rows were reused.

Run from the repository root with the benchmark extras (``pip install -e ".[benchmark]"``). The 18 photos are
4.5 MP per level; at 1 thread of an AVX-512 EPYC, CBM3D takes about 90 s/MP, the cifar10 model 31 and the photo
model 4, so the four levels take about 40 minutes, most of them CBM3D's; ``--count`` and ``--sigmas`` run a part:

    python benchmarks/photo_quality.py --models cifar10=checkpoints/cifar10.safetensors \
        photo=checkpoints/photo.safetensors --sigma-auto
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import (
    MCMASTER,
    ROOT,
    Run,
    arguments,
    checkpoint_line,
    cli,
    fmt,
    header,
    parse,
    psnr,
    read_pixels,
    report,
    run,
    run_cli,
    ssim,
    table,
    work_folder,
)
from PIL import Image

TITLE = "Photo denoising: sda models against CBM3D on McMaster18"
"""The heading of this script's tables, and of its section of ``benchmarks/RESULTS.md``."""

CHECKS = (
    (15, "cifar10", 0.0),
    (15, "CBM3D", 0.0),
    (25, "cifar10", 0.3),
    (25, "CBM3D", 0.5),
    (50, "cifar10", 0.3),
    (50, "CBM3D", 0.5),
)
"""(sigma in /255, the method the photo model is compared with, the PSNR margin in dB it must reach)."""

CBM3D_SCRIPT = r"""
import sys
from pathlib import Path

import bm3d
import numpy as np
from PIL import Image

sigma, source, target = float(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
for path in sorted(source.glob("*.png")):
    noisy = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    estimate = np.clip(bm3d.bm3d_rgb(noisy, sigma_psd=sigma), 0, 1)
    Image.fromarray(np.round(estimate * 255).astype(np.uint8)).save(target / path.name)
"""
"""CBM3D over a folder of noisy 8-bit PNGs (argv: sigma in pixel units, input folder, output folder)."""

ESTIMATE = re.compile(r"^(?P<source>.+): estimated sigma (?P<sigma>[0-9.]+)", re.MULTILINE)
"""The line ``sda denoise --sigma auto`` prints on stderr for each image."""


def parse_args() -> argparse.Namespace:
    parser = arguments(__doc__, models=None, count=18, count_help="photos (the first ones in name order)", work=True)
    parser.add_argument(
        "--sigmas", nargs="+", type=float, default=[15.0, 25.0, 50.0], help="noise levels in /255 (e.g. 5 15 25 50)"
    )
    parser.add_argument("--photos", type=Path, default=MCMASTER, help="folder of the McMaster TIFFs")
    parser.add_argument("--no-bm3d", action="store_true", help="skip CBM3D")
    parser.add_argument("--tile", type=int, default=None, help="--tile of sda denoise (default: the CLI's)")
    parser.add_argument(
        "--sigma-auto", action="store_true", help="also run the first model with --sigma auto and report its error"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse a method's outputs in --work when its command and inputs match"
    )
    args = parse(parser)
    if args.models is None:  # cifar10, and photo when it is there; the checks need the names photo and cifar10
        args.models = {"cifar10": "checkpoints/cifar10.safetensors"}
        if (ROOT / "checkpoints" / "photo.safetensors").exists():
            args.models["photo"] = "checkpoints/photo.safetensors"
    models: dict[str, Path] = {}
    for name, path in args.models.items():
        model = Path(path) if Path(path).is_absolute() else ROOT / path
        if not model.is_file():
            parser.error(f"--models: {model} is not a file")
        models[name] = model.resolve()
    args.models = models
    if any(s <= 0 for s in args.sigmas):
        parser.error("--sigmas must be positive (in /255)")
    args.sigmas = list(dict.fromkeys(args.sigmas))
    if args.reuse and args.work is None:
        parser.error("--reuse needs --work (the folder of the earlier run)")
    return args


# ---------------------------------------------------------------------------------------------------------------
# Images and metrics


def natural_key(path: Path) -> tuple[int, int | str]:
    """Sort ``2.tif`` before ``10.tif``: numeric names by value, then the others by name."""
    return (0, int(path.stem)) if path.stem.isdigit() else (1, path.stem)


def write_clean(photos: Path, count: int, folder: Path) -> list[str]:
    """The first ``count`` photos as 8-bit RGB PNGs in ``folder``, named so that sorted order is the natural one."""
    files = sorted((p for p in photos.iterdir() if p.suffix.lower() in (".tif", ".tiff")), key=natural_key)
    if len(files) < count:
        raise SystemExit(f"{photos}: {len(files)} TIFF photos, fewer than --count {count}")
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for rank, path in enumerate(files[:count], start=1):
        name = f"{rank:02d}_{path.stem}.png"
        Image.open(path).convert("RGB").save(folder / name)
        names.append(name)
    return names


@dataclass
class Row:
    """One method at one sigma; ``sigma_error`` only for ``--sigma auto``."""

    method: str
    psnr: float | None = None
    ssim: float | None = None
    seconds_per_mp: float | None = None
    memory: float | None = None
    sigma_error: float | None = None
    error: str | None = None
    reused: bool = False


def scores(folder: Path, clean: Path, names: list[str]) -> tuple[float, float]:
    """Mean PSNR (dB, peak 1, per image) and mean SSIM of the PNGs ``names`` of ``folder`` against ``clean``."""
    psnrs, ssims = [], []
    for name in names:
        estimate, truth = read_pixels(folder / name)[None], read_pixels(clean / name)[None]
        psnrs.append(float(psnr(torch.from_numpy(estimate), torch.from_numpy(truth))[0]))
        ssims.append(ssim(estimate, truth)[0])
    return float(np.mean(psnrs)), float(np.mean(ssims))


def run_key(command: list[str], inputs: list[Path], threads: int) -> str:
    """SHA-256 of the command, the bytes of its input files (noisy images, model) and the thread count."""
    digest = hashlib.sha256(json.dumps([command, threads]).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def measured(
    method: str,
    command: list[str],
    out: Path,
    work: Path,
    names: list[str],
    args: argparse.Namespace,
    inputs: list[Path],
    key_parts: list[str] | None = None,
) -> tuple[Row, Run]:
    """Run one denoising command into ``out`` and score its files; with ``--reuse``, an earlier identical run's
    files and measurements (its ``run.json``) stand in for running it again. The run's key is ``key_parts`` (default:
    the command) with the bytes of ``inputs`` and the thread count."""
    out.mkdir(parents=True, exist_ok=True)  # an existing folder: the CLI writes OUT/<name> even for one input
    key, log = run_key(key_parts or command, inputs, args.threads), out / "run.json"
    if args.reuse and log.is_file() and all((out / name).is_file() for name in names):
        earlier = json.loads(log.read_text())
        if earlier["key"] == key:
            value, ssim = scores(out, work / "clean", names)
            result = Run(earlier["seconds"], earlier["memory"], earlier["stderr"])
            return Row(method, value, ssim, earlier["seconds_per_mp"], earlier["memory"], reused=True), result
    log.unlink(missing_ok=True)
    result = run(command, threads=args.threads)
    if result.error is not None:
        print(f"{method}: {result.error}", file=sys.stderr, flush=True)
        return Row(method, error=f"n/a ({result.error})"), result
    megapixels = len(names) * args.megapixels_per_image
    value, ssim = scores(out, work / "clean", names)
    row = Row(method, value, ssim, result.seconds / megapixels, result.memory)
    measurements = {"seconds": result.seconds, "seconds_per_mp": row.seconds_per_mp, "memory": result.memory}
    log.write_text(json.dumps({"key": key, **measurements, "stderr": result.stderr}))
    return row, result


def sigma_error(stderr: str, level: float, count: int) -> float | None:
    """Mean |estimated − true| sigma in /255 over the images, from the ``estimated sigma`` lines."""
    estimates = [float(m["sigma"]) * 255 for m in ESTIMATE.finditer(stderr)]
    if len(estimates) != count:
        return None
    return float(np.mean([abs(e - level) for e in estimates]))


def measure_level(level: float, args: argparse.Namespace, work: Path, names: list[str]) -> list[Row]:
    """The rows of one noise level (module docstring), printed as they come."""
    sigma = f"{level:g}/255"
    tag = f"{level:g}"
    noisy = work / f"noisy_{tag}"
    noisy.mkdir(parents=True, exist_ok=True)
    run_cli("noise", str(work / "clean"), "--sigma", sigma, "--seed", "0", "-o", str(noisy), "-q", threads=args.threads,
            check=True)  # fmt: skip
    rows = [Row("noisy input", *scores(noisy, work / "clean", names))]
    inputs = [noisy / name for name in names]
    sources = sorted((ROOT / "sda_cli").rglob("*.py"))
    if not args.no_bm3d:
        command = [sys.executable, "-c", CBM3D_SCRIPT, repr(level / 255), str(noisy), str(work / f"cbm3d_{tag}")]
        key = [*command, f"bm3d {importlib.metadata.version('bm3d')}"]
        rows.append(measured("CBM3D", command, work / f"cbm3d_{tag}", work, names, args, inputs, key)[0])
    tile = [] if args.tile is None else ["--tile", str(args.tile)]
    for index, (name, model) in enumerate(args.models.items()):
        for auto in (False, True) if args.sigma_auto and index == 0 else (False,):
            out = work / f"sda_{name}{'_auto' if auto else ''}_{tag}"
            command = cli("denoise", str(noisy), "--sigma", "auto" if auto else sigma, "--model", str(model))
            command += ["-o", str(out), "--method", "mmse", "--precision", "fp32", "-q", *tile]
            method = f"sda {name}" + (", --sigma auto" if auto else "")
            row, result = measured(method, command, out, work, names, args, [*inputs, model, *sources])
            if auto and row.error is None:
                row.sigma_error = sigma_error(result.stderr, level, len(names))
            rows.append(row)
    for row in rows:
        print(f"σ {sigma}: " + " | ".join(cells(row)), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Report


def cells(row: Row) -> list[str]:
    if row.error is not None:
        return [row.method, row.error, "—", "—", "—", "—"]
    return [
        row.method + (" (reused)" if row.reused else ""),
        fmt(row.psnr, 2),
        fmt(row.ssim, 4),
        fmt(row.seconds_per_mp, 1),
        fmt(row.memory, 0),
        fmt(row.sigma_error, 2),
    ]


def shown_psnr(rows: list[Row], method: str) -> float | None:
    """The PSNR of ``method`` as its table shows it (2 decimals), or None when it was not run or failed."""
    for row in rows:
        if row.method == method and row.psnr is not None:
            return round(row.psnr, 2)
    return None


def checks(results: dict[float, list[Row]], models: dict[str, Path]) -> list[str]:
    """One line per check of the issue, with PASS, FAIL or why it was not made."""
    lines = []
    for level, other, margin in CHECKS:
        need = "no worse than" if margin == 0 else f"≥ {margin:.1f} dB above"
        what = f"σ {level}/255: sda photo {need} {'sda cifar10' if other == 'cifar10' else other}"
        needed = {"photo"} if other == "CBM3D" else {"photo", "cifar10"}
        if not needed <= set(models):
            lines.append(f"- {what}: not checked (needs --models {' and '.join(sorted(needed))})")
            continue
        if level not in results:
            lines.append(f"- {what}: not checked (σ {level}/255 not in --sigmas)")
            continue
        photo = shown_psnr(results[level], "sda photo")
        base = shown_psnr(results[level], "CBM3D" if other == "CBM3D" else "sda cifar10")
        if photo is None or base is None:
            lines.append(f"- {what}: not checked ({'CBM3D' if other == 'CBM3D' else 'a model'} did not run)")
            continue
        gap = photo - base
        verdict = "PASS" if gap >= margin - 1e-9 else "FAIL"
        lines.append(f"- {what}: {photo:.2f} − {base:.2f} = {gap:+.2f} dB: {verdict}")
    return lines


def main() -> None:
    args = parse_args()
    if not args.no_bm3d:
        try:
            import bm3d  # noqa: F401
        except ImportError as error:
            raise SystemExit(f"bm3d is not installed ({error}): pip install bm3d, or pass --no-bm3d") from None
    try:
        import skimage  # noqa: F401
    except ImportError as error:
        raise SystemExit(f"scikit-image is not installed ({error}): pip install scikit-image") from None
    checkpoints = "; ".join(f"{name}: {checkpoint_line(path)}" for name, path in args.models.items())

    results: dict[float, list[Row]] = {}
    with work_folder(args.work, "sda-photos-") as work:
        names = write_clean(args.photos, args.count, work / "clean")
        height, width = read_pixels(work / "clean" / names[0]).shape[:2]
        args.megapixels_per_image = height * width / 1e6
        for level in args.sigmas:
            results[level] = measure_level(level, args, work, names)

    columns = ["method", "PSNR (dB)", "SSIM", "s/MP", "peak RSS (MB)", "σ̂ error (/255)"]
    parts = [
        header(TITLE, checkpoints),
        f"The first {args.count} of the 18 McMaster photos ({width}×{height} RGB), 8-bit PNG noisy inputs "
        "(clipped, quantised) from `sda noise --seed 0`; every method writes 8-bit PNGs, which are scored. "
        "PSNR: peak 1, per image then averaged; SSIM: scikit-image, data_range=1, channel_axis=2. "
        f"sda: `sda denoise --method mmse --precision fp32{'' if args.tile is None else f' --tile {args.tile}'}`; "
        "CBM3D: `bm3d.bm3d_rgb(noisy, sigma_psd=σ)` with the true σ, in a Python command of its own. "
        "s/MP: wall time of the whole command (process start, imports, model load and file I/O included, nothing "
        "subtracted) per megapixel. Peak RSS: of the command alone, getrusage(RUSAGE_CHILDREN).ru_maxrss of a small "
        "process that runs it. "
        f"OMP_NUM_THREADS={args.threads}. σ̂ error: mean |estimated − true σ| of `--sigma auto`, in /255."
        + (
            " (reused): not run again, scored from the files of an earlier run of the same command on the same "
            "inputs and model bytes at the same thread count; its s/MP and memory are that run's."
            if any(row.reused for rows in results.values() for row in rows)
            else ""
        ),
    ]
    for level, rows in results.items():
        parts += ["", f"### σ = {level:g}/255", "", table(columns, [cells(row) for row in rows])]
    parts += ["", "Checks (issue: Real photos: a photo prior; PSNRs as shown above):", *checks(results, args.models)]
    text = "\n".join(parts)
    report(TITLE, text, args.record)


if __name__ == "__main__":
    main()
