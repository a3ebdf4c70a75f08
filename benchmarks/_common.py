"""Helpers shared by the benchmark scripts: the table header, PSNR, thread settings, and recording a table in
``benchmarks/RESULTS.md``."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10"
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


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``(B, C, H, W)`` pixels in [0, 1] (peak 1)."""
    mse = (estimate.double() - truth.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


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
