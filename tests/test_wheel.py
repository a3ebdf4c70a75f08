"""The built wheel is a complete install: every module of ``sda_cli`` (a new subpackage included, found by walking the
source tree) and the shipped models, byte for byte, which an installed ``sda_cli.models`` then finds from any
directory. The wheel is built from a copy of the sources, so the repository gets no ``build/`` or ``*.egg-info``."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sda_cli"
MODELS = ROOT / "checkpoints"
SHIPPED_FILES = ("cifar10.safetensors", "photo.safetensors", "example.png")


def source_modules() -> set[str]:
    """Every ``.py`` under ``sda_cli/`` as its path inside a wheel (``sda_cli/guidance/sda.py``)."""
    return {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel ``pip wheel`` builds (no isolation: the setuptools of this environment) from a copy of the top-level
    files, ``sda_cli/`` and ``checkpoints/``."""
    for tool in ("pip", "setuptools"):
        if importlib.util.find_spec(tool) is None:
            pytest.fail(f"{tool} is not installed in {sys.prefix}: the wheel cannot be built (pip install {tool})")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    for path in ROOT.iterdir():
        if path.is_file() and not path.name.startswith("."):
            shutil.copy2(path, source / path.name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PACKAGE, source / PACKAGE.name, ignore=ignore)
    shutil.copytree(MODELS, source / MODELS.name, ignore=ignore)
    build = ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(work / "dist"), str(source)]
    command = [sys.executable, "-m", "pip", *build]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"building the wheel failed ({' '.join(command)}):\n{done.stdout}\n{done.stderr}")
    wheels = list((work / "dist").glob("sda_cli-*.whl"))
    assert len(wheels) == 1, f"expected one sda_cli wheel, got {wheels}"
    return wheels[0]


def test_wheel_holds_every_module(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = sorted(source_modules() - names)
    assert not missing, f"modules of sda_cli/ left out of the wheel (pyproject.toml's package discovery): {missing}"


def test_wheel_holds_the_shipped_models_byte_for_byte(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in SHIPPED_FILES:
            member = f"sda_cli/checkpoints/{name}"
            assert member in names, f"{member} is not in the wheel (pyproject.toml's package-data)"
            data, expected = archive.read(member), (MODELS / name).read_bytes()
            assert len(data) == len(expected), f"{member}: {len(data)} bytes, checkpoints/{name} has {len(expected)}"
            assert sha256(data) == sha256(expected), f"{member} differs from checkpoints/{name}"


def test_wheel_installs_nothing_outside_the_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    metadata = {top for top in tops if top.startswith("sda_cli-") and top.endswith(".dist-info")}
    stray = sorted(tops - metadata - {"sda_cli"})
    assert not stray, f"the wheel would install these outside sda_cli/: {stray}"


def test_installed_package_finds_the_shipped_models_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    """The unpacked wheel, first on ``sys.path``, run from an unrelated directory: ``resolve_model`` gives the files
    inside the installed package."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import sda_cli.models as m; "
        "print(m.resolve_model('photo')); print(m.resolve_model('cifar10')); print(m.resolve_model(None))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    folder = site.resolve() / "sda_cli" / "checkpoints"
    assert done.stdout.split() == [str(folder / f"{name}.safetensors") for name in ("photo", "cifar10", "cifar10")]
