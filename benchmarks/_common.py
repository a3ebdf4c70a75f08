"""The harness every benchmark script shares, so that each script keeps only what it measures.

* options: :func:`arguments` builds a script's parser with the common options (``--model``, ``--models``,
  ``--threads``, ``--count``, ``--seed``, ``--data-dir``, ``--work``, ``--record``: those the script asks for, with its
  own defaults); the script adds its own; :func:`parse` parses, checks and applies ``--threads``;
* the command line: :func:`run_cli` runs ``python -m sda_cli ARGS`` (:func:`run` any command) in a fresh process with
  ``OMP_NUM_THREADS`` set, from the repository root, and returns its wall seconds, peak resident memory, standard
  error and exit code (:class:`Run`; :func:`error_line` for a failure);
* metrics: :func:`psnr` and :func:`ssim`, per image;
* files: :func:`read_pixels`, :func:`read_folder` and :func:`write_cifar_pngs`;
* the methods of ``sda_cli.guidance.METHODS`` a script may name (:func:`restore_methods`, :func:`option_default`);
* tables: :func:`header` (date, machine, command, checkpoint), :func:`table`, and :func:`report`, which prints them
  and with ``--record`` keeps them in ``benchmarks/RESULTS.md`` (:func:`record`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10"
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
"""The photo sets (``bsds400``, ``mcmaster18``); see ``shared/data/README.md``."""
MCMASTER = PHOTOS / "mcmaster18"
"""The 18 McMaster validation photos (500 × 500 RGB, 8-bit TIFF, named 1 to 18)."""
CPUS = os.cpu_count() or 1
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
"""The file where ``--record`` keeps the latest table of each script, one ``## TITLE`` section per script."""


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads in torch (and in libraries started after this)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


@contextlib.contextmanager
def work_folder(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created if needed and kept), or a temporary folder removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


def checkpoint_line(path: Path | None) -> str:
    """``path (step N)`` from the checkpoint's metadata, or a note when there is none."""
    if path is None:
        return "none (models are trained in this run)"
    from sda_cli.checkpoint import read_metadata

    step = read_metadata(path).get("training", {}).get("step", "?")
    resolved = path.resolve()
    shown = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path
    return f"{shown} (step {step})"


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one) and whether it runs bf16 natively."""
    from sda_cli.denoiser import cpu_has_native_bf16

    name = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({'native' if cpu_has_native_bf16() else 'no native'} bf16)"


def header(title: str, checkpoint: str) -> str:
    """The lines that head every table: date, machine, command line and checkpoint."""
    command = shlex.join(["python", *sys.argv])
    return "\n".join(
        [
            f"## {title}",
            "",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- machine: {cpu_name()}, {os.cpu_count()} CPUs, {platform.platform()}, torch {torch.__version__}, "
            f"torch threads: {torch.get_num_threads()}",
            f"- command: `{command}`",
            f"- checkpoint: {checkpoint}",
            "",
        ]
    )


# ---------------------------------------------------------------------------------------------------------------
# Options


def positive(text: str) -> int:
    """An integer of at least 1 (``--count``, ``--threads``)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def model_file(text: str) -> Path:
    """``--model``: a shipped model's name (``cifar10``, ``photo``) or a ``.safetensors`` file, as the file's path."""
    from sda_cli.models import resolve_model

    try:
        return resolve_model(text)
    except ValueError as error:  # CheckpointError: no such file or name
        raise argparse.ArgumentTypeError(str(error)) from None


_ABSENT = object()


def arguments(
    doc: str | None,
    *,
    model: object = _ABSENT,
    models: object = _ABSENT,
    count: int | None = None,
    count_help: str = "images (the first ones)",
    threads: int | None = CPUS,
    seed: str | None = None,
    data_dir: bool = False,
    work: bool = False,
    record: bool = True,
) -> argparse.ArgumentParser:
    """A script's parser: its module docstring ``doc`` as the description, and the common options it asks for, each
    with the script's own default; the script adds its own options, then calls :func:`parse`.

    * ``model``: ``--model``, a shipped name or a file, read as the file's path (:func:`model_file`); the default a
      name, a path, or ``None`` (no model unless one is given);
    * ``models``: ``--models NAME=SPEC ...``, read by :func:`parse` into ``{NAME: SPEC}``; ``None``: the script's
      own choice when none is given;
    * ``count``: ``--count``, its default (``count_help`` its help); ``threads``: ``--threads``, its default
      (``None``: no such option); ``seed``: ``--seed`` (default 0) with this help;
    * ``data_dir``: ``--data-dir``, the folder holding ``cifar-10-batches-py/``; ``work``: ``--work`` (also spelt
      ``--workdir``), a folder that keeps the files (default: a temporary folder, removed); ``record``: ``--record``.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if model is not _ABSENT:
        shown = "none: the command's own" if model is None else model
        parser.add_argument(
            "--model", type=model_file, default=model, help=f"a shipped model's name or a file (default: {shown})"
        )
    if models is not _ABSENT:
        shown = "as the description says" if models is None else " ".join(models)  # type: ignore[attr-defined]
        parser.add_argument(
            "--models", nargs="+", metavar="NAME=SPEC", default=models, help=f"the models, each NAME=SPEC ({shown})"
        )
    if count is not None:
        parser.add_argument("--count", type=positive, default=count, help=f"{count_help} (default: {count})")
    if threads is not None:
        parser.add_argument("--threads", type=positive, default=threads, help=f"CPU threads (default: {threads})")
    if seed is not None:
        parser.add_argument("--seed", type=int, default=0, help=f"{seed} (default: 0)")
    if data_dir:
        parser.add_argument(
            "--data-dir", type=Path, default=DEFAULT_DATA, help="the folder holding cifar-10-batches-py/"
        )
    if work:
        parser.add_argument(
            "--work", "--workdir", dest="work", type=Path, default=None,
            help="keep the files in this folder (default: a temporary folder, removed at the end)",
        )  # fmt: skip
    if record:
        parser.add_argument(
            "--record", action="store_true", help="also write the tables as their section of benchmarks/RESULTS.md"
        )
    return parser


def pairs(items: Sequence[str], parser: argparse.ArgumentParser, option: str = "--models") -> dict[str, str]:
    """``NAME=VALUE`` items as ``{NAME: VALUE}``, in order; a malformed item or a name given twice is an error."""
    found: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            parser.error(f"{option} takes NAME=VALUE items, not {item!r}")
        if name in found:
            parser.error(f"{option}: the name {name!r} is used twice")
        found[name] = value
    return found


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed options: ``--models`` as ``{NAME: SPEC}`` (:func:`pairs`), and ``--threads`` applied
    (:func:`set_threads`)."""
    args = parser.parse_args(argv)
    if getattr(args, "models", None) is not None:
        args.models = pairs(args.models, parser)
    if getattr(args, "threads", None) is not None:
        set_threads(args.threads)
    return args


def restore_methods(sampling: bool = False) -> list[str]:
    """The methods of ``sda_cli.guidance.METHODS`` that take an observation operator (``sda restore``'s), in the
    registry's order; with ``sampling``, only those that draw samples."""
    from sda_cli.guidance import METHODS

    return [name for name, kind in METHODS.items() if not kind.identity_only and (kind.draws or not sampling)]


def option_default(method: str, name: str) -> float | int:
    """The default of option ``name`` of ``method`` (``sda_cli.guidance.METHODS[method].options``)."""
    from sda_cli.guidance import METHODS

    return next(option.default for option in METHODS[method].options if option.name == name)


# ---------------------------------------------------------------------------------------------------------------
# The command line

_MEASURE = r"""
import json, resource, subprocess, sys, time
report, limit, *command = sys.argv[1:]
if int(limit) > 0:
    resource.setrlimit(resource.RLIMIT_AS, (int(limit), int(limit)))
started = time.perf_counter()
code = subprocess.run(command).returncode
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
with open(report, "w") as f:
    json.dump({"seconds": seconds, "maxrss": peak, "returncode": code}, f)
"""
"""Runs one command and reports its wall seconds, exit code and ``RUSAGE_CHILDREN`` peak RSS: that command's alone.
(``os.wait4`` on a direct child of a benchmark reports at least the benchmark's own peak, which the child's
``ru_maxrss`` inherits from the memory it was started in: 512 MB for ``python -c pass`` started by
``photo_quality.py``, 12 MB through this process.)"""

MEASURED = (
    "wall seconds of the whole command (process start, imports, model load and file I/O included); peak RSS: "
    "getrusage(RUSAGE_CHILDREN).ru_maxrss of a small process that runs the command alone"
)
"""How :func:`run` measures, for the notes below the tables."""


@dataclass
class Run:
    """One command's wall seconds, peak resident memory (MB), standard output and error, and exit code."""

    seconds: float
    memory: float
    stderr: str
    returncode: int = 0
    stdout: str = ""

    @property
    def error(self) -> str | None:
        """The command's error line (:func:`error_line`) when it failed, else ``None``."""
        return None if self.returncode == 0 else error_line(self.stderr)


def error_line(stderr: str) -> str:
    """The command's ``error`` line, else a traceback's last line, else the first non-empty line of its stderr."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith("error")]
    if errors:
        return errors[0]
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return lines[0] if lines else "no message"


def cli(*args: str) -> list[str]:
    """The command ``python -m sda_cli ARGS`` with this interpreter."""
    return [sys.executable, "-m", "sda_cli", *args]


def run(command: Sequence[str], *, threads: int, check: bool = False, max_memory_gb: float = 0.0) -> Run:
    """Run ``command`` in a fresh process from the repository root with ``OMP_NUM_THREADS=threads``, its output
    captured, through a small measuring process (:data:`_MEASURE`) whose address space, and so the command's, is
    capped at ``max_memory_gb`` (0: no cap). ``check``: a failure ends the script with the command's error line."""
    descriptor, report = tempfile.mkstemp(prefix="sda-run-", suffix=".json")
    os.close(descriptor)
    try:
        limit = int(max_memory_gb * 2**30)
        measure = [sys.executable, "-c", _MEASURE, report, str(limit), *command]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run(measure, cwd=ROOT, env=env, capture_output=True, text=True, errors="replace")
        text = Path(report).read_text()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(report)
    if done.returncode != 0 or not text:
        result = Run(0.0, 0.0, f"error: the measuring process failed\n{done.stderr}", done.returncode or 1, done.stdout)
    else:
        measured = json.loads(text)
        scale = 2**20 if sys.platform == "darwin" else 2**10  # ru_maxrss: bytes on macOS, kilobytes on Linux
        result = Run(measured["seconds"], measured["maxrss"] / scale, done.stderr, measured["returncode"], done.stdout)
    if check and result.error is not None:
        print(result.stderr, file=sys.stderr, end="")
        shown = shlex.join(["sda", *command[3:]] if list(command[:3]) == cli() else command)
        raise SystemExit(f"{shown} failed ({result.returncode}): {result.error}")
    return result


def run_cli(*args: str, threads: int, check: bool = False, max_memory_gb: float = 0.0) -> Run:
    """``python -m sda_cli ARGS`` through :func:`run`: wall seconds, peak RSS, output and exit code."""
    return run(cli(*args), threads=threads, check=check, max_memory_gb=max_memory_gb)


# ---------------------------------------------------------------------------------------------------------------
# Files and metrics


def read_pixels(path: Path) -> np.ndarray:
    """An image file as float64 RGB pixels ``(H, W, 3)`` in [0, 1] (8-bit values over 255)."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255


def read_folder(folder: Path, pattern: str = "*.png") -> np.ndarray:
    """The files of ``folder`` matching ``pattern``, in name order, as ``(N, H, W, 3)`` pixels (:func:`read_pixels`)."""
    return np.stack([read_pixels(path) for path in sorted(folder.glob(pattern))])


def write_cifar_pngs(data_dir: Path, count: int, folder: Path) -> np.ndarray:
    """The first ``count`` exact CIFAR-10 test images as 8-bit PNGs ``folder/00000.png``, ...; returned as float64
    ``(N, 32, 32, 3)`` pixels in [0, 1]."""
    from sda_cli.data import cifar10

    folder.mkdir(parents=True, exist_ok=True)
    images = cifar10(data_dir, train=False, download=False).images[:count].permute(0, 2, 3, 1).numpy()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return images.astype(np.float64) / 255


def psnr(estimate: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Per-image PSNR in dB of pixels in [0, 1] (peak 1), the images along the first axis (any layout after it):
    float64 tensors for tensors, arrays for NumPy arrays (the same formula in the inputs' library, so that each
    script's numbers keep every bit)."""
    if isinstance(estimate, torch.Tensor):
        mse = (estimate.double() - truth.double()).square().flatten(1).mean(1)  # type: ignore[union-attr]
        return 10 * torch.log10(1 / mse.clamp_min(1e-12))
    mse = np.square(estimate - truth).reshape(len(truth), -1).mean(1)
    return 10 * np.log10(1 / np.maximum(mse, 1e-12))


def ssim(estimate: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Per-image SSIM of pixels in [0, 1]: scikit-image's ``structural_similarity(data_range=1, channel_axis=2)`` of
    each image in float64, channels last. Tensors are ``(N, C, H, W)`` (their channels moved last) and give a
    tensor; arrays are ``(N, H, W, C)`` and give an array."""
    from skimage.metrics import structural_similarity

    if isinstance(estimate, torch.Tensor):
        a = estimate.permute(0, 2, 3, 1).double().numpy()
        b = truth.permute(0, 2, 3, 1).double().numpy()  # type: ignore[union-attr]
        values = [structural_similarity(p, q, data_range=1, channel_axis=2) for p, q in zip(a, b, strict=True)]
        return torch.tensor(values)
    values = [structural_similarity(p, q, data_range=1, channel_axis=2) for p, q in zip(estimate, truth, strict=True)]
    return np.array(values)


def fmt(value: float | None, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, or an em dash for ``None``."""
    return "—" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------------------------
# Tables


def table(columns: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def record(title: str, text: str, path: Path = RESULTS) -> None:
    """Put ``text`` in ``path`` as its section ``## {title}``: the lines from that heading up to the next line that
    starts with ``## `` (or the end of the file) are replaced by ``text``; without such a section ``text`` is appended.

    ``text`` is what the script printed, starting with the heading line that :func:`header` writes. The file is
    written atomically: a temporary file in the same folder, then ``os.replace``, so a reader sees the old file or
    the new one, never a mixture.
    """
    heading = f"## {title}"
    if text.lstrip("\n").split("\n", 1)[0].rstrip() != heading:
        raise ValueError(f"the text to record must start with its heading {heading!r}")
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = [line for line in re.split(r"(?<=\n)", old) if line]  # only "\n" ends a line, as in markdown
    section = text.strip("\n") + "\n"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        before = "".join(lines).rstrip("\n")
        content = f"{before}\n\n{section}" if before else section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        after = "".join(lines[end:])
        content = "".join(lines[:start]) + section + (f"\n{after}" if after else "")
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
        if path.exists():
            shutil.copymode(path, temporary)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def report(title: str, text: str, record_it: bool) -> None:
    """Print a script's tables after a blank line and, when ``record_it`` (``--record``), put them in RESULTS.md as
    the section ``title`` (:func:`record`)."""
    print()
    print(text)
    if record_it:
        record(title, text)
