"""Training data: CIFAR-10 (torchvision's layout, local copies accepted) and folders of images.

Every kind is decoded once into uint8 tensors that live on the training device (CIFAR-10 is 150 MB), so a
training step draws its batch by indexing, with no input pipeline. Two ways to draw a batch:

* whole images, all resized and centre-cropped to one size ``(N, C, H, W)``, with random horizontal flips;
* random ``crop × crop`` windows of photos kept at full resolution, each turned by a random element of the
  dihedral group (flips and 90° rotations, 8 in all), as colour CNN denoisers are trained (Zhang et al.,
  "Beyond a Gaussian Denoiser", TIP 2017; "FFDNet", TIP 2018); optionally (``half_scale``) also from each photo
  downscaled by 2, half the photo crops, and (``mix_cifar``) from mosaics of CIFAR-10 images, that share of them.

JPEG photos (BSDS400 among them) store their colour at half the resolution of their brightness (4:2:0 chroma
subsampling): a prior learnt from them alone takes fine colour detail for noise and removes it from photos that have
some. Averaging 2×2 pixels gives photos whose colour is at full resolution (one stored colour sample per pixel), and
scale augmentation besides; CIFAR-10 images, downscaled photos, have full-resolution colour too
(``benchmarks/photo_colour.py``).
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sda_cli.images import PICTURE_EXTENSIONS, to_model

__all__ = [
    "DataError",
    "Dataset",
    "check_options",
    "cifar10",
    "cifar_mosaics",
    "default_cifar_dirs",
    "half_size",
    "image_folder",
    "load_dataset",
    "photo_folder",
]


DOWNLOAD_TIMEOUT = 60.0
"""Seconds without an answer before a CIFAR-10 download gives up."""


class DataError(ValueError):
    """A data set that cannot be used; the message is one line that says what to do."""


@dataclass
class Dataset:
    """Images as uint8 ``(N, C, H, W)`` (or a list of ``(C, H_i, W_i)`` photos with ``crop``), the name recorded in
    checkpoints, files skipped, and the side of the random crops (``None``: whole images)."""

    images: Tensor | list[Tensor]
    name: str
    skipped: int = 0
    crop: int | None = None

    @property
    def channels(self) -> int:
        return int(self.images[0].shape[0])

    @property
    def size(self) -> int:
        """The side of the training images: the crop, or the images' own."""
        return self.crop or int(self.images[0].shape[-1])

    def to(self, device: torch.device) -> Dataset:
        images = [image.to(device) for image in self.images] if self.crop else self.images.to(device)
        return Dataset(images, self.name, self.skipped, self.crop)  # type: ignore[arg-type]

    def batch(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` training images in model units :math:`x = 2p - 1`, augmented, ``(n, C, size, size)`` float32."""
        device = generator.device
        pick = torch.randint(len(self.images), (n,), generator=generator, device=device)
        if self.crop is None:
            assert isinstance(self.images, Tensor)
            x = self.images[pick].float()
            flip = torch.rand(n, generator=generator, device=device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        else:
            side = self.crop
            corners = torch.rand(n, 2, generator=generator, device=device).tolist()
            turns = torch.randint(8, (n,), generator=generator, device=device).tolist()
            windows = []
            for index, (u, v), turn in zip(pick.tolist(), corners, turns, strict=True):
                image = self.images[index]
                top = int(u * (image.shape[1] - side + 1))
                left = int(v * (image.shape[2] - side + 1))
                window = image[:, top : top + side, left : left + side].rot90(turn % 4, (1, 2))
                windows.append(window.flip(-1) if turn >= 4 else window)
            x = torch.stack(windows).float()
        return to_model(x.div_(255))


class _LocalCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR-10 that accepts a local copy whose files differ from the originals' md5.

    Copies rebuilt from other sources hold the same pixels and labels in the same layout, but not the
    same bytes (for example, other file names inside the pickles), so only presence is checked.
    """

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        return all(os.path.isfile(os.path.join(folder, name)) for name, _ in self.train_list + self.test_list)


def default_cifar_dirs() -> list[Path]:
    """Where CIFAR-10 is looked for when ``--data-dir`` is not given, in order."""
    dirs = []
    if os.environ.get("SDA_DATA_DIR"):
        dirs.append(Path(os.environ["SDA_DATA_DIR"]))
    dirs += [Path("data"), Path.home() / ".cache" / "sda" / "cifar10"]
    return dirs


def _has_cifar(root: Path) -> bool:
    folder = root / "cifar-10-batches-py"
    return all((folder / name).is_file() for name, _ in _LocalCIFAR10.train_list + _LocalCIFAR10.test_list)


def cifar10(data_dir: Path | None = None, train: bool = True, download: bool = True) -> Dataset:
    """CIFAR-10 from ``data_dir/cifar-10-batches-py``; downloaded into it (or the cache) if absent."""
    candidates = [Path(data_dir)] if data_dir is not None else default_cifar_dirs()
    root = next((d for d in candidates if _has_cifar(d)), None)
    if root is None and download:
        root = candidates[0] if data_dir is not None else candidates[-1]
        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # torchvision's download sets none: it could wait for ever
        try:
            torchvision.datasets.CIFAR10(str(root), train=train, download=True)
        except Exception as error:
            where = ", ".join(str(d) for d in candidates)
            raise DataError(
                f"CIFAR-10 not found in {where} and the download failed ({type(error).__name__}); "
                "pass --data-dir DIR where DIR holds cifar-10-batches-py/"
            ) from None
        finally:
            socket.setdefaulttimeout(timeout)
    if root is None:
        where = ", ".join(str(d) for d in candidates)
        raise DataError(f"CIFAR-10 not found in {where}; pass --data-dir DIR where DIR holds cifar-10-batches-py/")
    data = _LocalCIFAR10(str(root), train=train, download=False).data  # (N, 32, 32, 3) uint8
    return Dataset(torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous(), "cifar10")


def _load_resized(path: Path, size: int, channels: int) -> np.ndarray | None:
    """Decode, convert, resize the shorter side to ``size`` and centre-crop; None when unreadable."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            scale = size / min(image.size)
            new_size = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
            image = image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=3.0)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            array = np.array(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    return array[:, :, None] if array.ndim == 2 else array


class _FolderImages(torch.utils.data.Dataset):
    def __init__(self, files: list[Path], size: int, channels: int) -> None:
        self.files, self.size, self.channels = files, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, bool]:
        array = _load_resized(self.files[index], self.size, self.channels)
        if array is None:
            return np.zeros((self.size, self.size, self.channels), np.uint8), False
        return array, True


def image_folder(folder: Path, size: int, channels: int = 3, workers: int = 2) -> Dataset:
    """Every image below ``folder`` (recursively), resized and centre-cropped to ``size``.

    Decoding runs in a DataLoader with ``workers`` processes; unreadable files are skipped and counted.
    """
    folder = Path(folder)
    files = _image_files(folder)
    loader = torch.utils.data.DataLoader(
        _FolderImages(files, size, channels), batch_size=64, num_workers=workers if len(files) > 256 else 0
    )
    arrays, ok = [], []
    for batch, good in loader:
        arrays.append(batch)
        ok.append(good)
    images, good = torch.cat(arrays), torch.cat(ok)
    if not good.any():
        raise DataError(f"{folder}: none of the {len(files)} image files could be read; check the files")
    return Dataset(images[good].permute(0, 3, 1, 2).contiguous(), str(folder), skipped=int((~good).sum()))


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; pass --dataset cifar10 or a folder of images")
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in PICTURE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    if not files:
        suffixes = " ".join(sorted(PICTURE_EXTENSIONS))
        raise DataError(f"{folder}: no images found (looked for {suffixes}); pass a folder that holds images")
    return files


def half_size(image: Tensor) -> Tensor:
    """A uint8 image ``(C, H, W)`` downscaled by 2: the mean of each 2×2 block, rounded half up (an odd last row or
    column is dropped)."""
    height, width = image.shape[1] // 2 * 2, image.shape[2] // 2 * 2
    x = image[:, :height, :width].int()
    total = x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]
    return ((total + 2) // 4).to(torch.uint8)


def photo_folder(folder: Path, crop: int, channels: int = 3, half_scale: bool = False) -> Dataset:
    """Every image below ``folder`` at full resolution, for random ``crop × crop`` windows (:meth:`Dataset.batch`);
    with ``half_scale``, each one downscaled by 2 (:func:`half_size`) as well, when both its sides stay at least
    ``crop``.

    Images with a side shorter than ``crop`` and unreadable files are skipped and counted.
    """
    folder = Path(folder)
    images, skipped = [], 0
    for path in _image_files(folder):
        try:
            with Image.open(path) as image:
                array = np.array(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
            skipped += 1
            continue
        array = array[:, :, None] if array.ndim == 2 else array
        if min(array.shape[:2]) < crop:
            skipped += 1
            continue
        images.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    if not images:
        raise DataError(f"{folder}: no readable image has both sides of at least {crop} pixels; lower --crop")
    if not half_scale:
        return Dataset(images, str(folder), skipped=skipped, crop=crop)
    halves = [half for half in map(half_size, images) if min(half.shape[1:]) >= crop]
    return Dataset(images + halves, f"{folder} (+ {len(halves)} at half scale)", skipped=skipped, crop=crop)


def cifar_mosaics(images: Tensor, count: int, generator: torch.Generator) -> list[Tensor]:
    """``count`` square mosaics of k×k of the small ``images`` ``(N, C, s, s)``, each image in one mosaic (a few twice
    when N is not a multiple of k², with k = ⌈√(N / count)⌉), in a random order.

    Mosaics of CIFAR-10 images give the random crops of :meth:`Dataset.batch` images whose colour is at full
    resolution (CIFAR-10 images are downscaled photos), with an edge at every s pixels between unrelated images.
    """
    total, channels, side = images.shape[0], images.shape[1], images.shape[-1]
    k = math.ceil(math.sqrt(total / count))
    order = torch.randperm(total, generator=generator).repeat(math.ceil(count * k * k / total))[: count * k * k]
    tiles = images[order].reshape(count, k, k, channels, side, side)
    return list(tiles.permute(0, 3, 1, 4, 2, 5).reshape(count, channels, k * side, k * side).unbind(0))


def _with_mosaics(photos: Dataset, cifar: Dataset, share: float) -> Dataset:
    """``photos`` with mosaics of ``cifar`` added (:func:`cifar_mosaics`), ``share`` of all the images."""
    assert isinstance(cifar.images, Tensor) and photos.crop is not None
    if photos.channels != cifar.channels:
        raise DataError("--mix-cifar needs RGB photos (--channels 3): CIFAR-10 is RGB")
    count = max(1, round(len(photos.images) * share / (1 - share)))
    mosaics = cifar_mosaics(cifar.images, count, torch.Generator().manual_seed(0))
    if mosaics[0].shape[-1] < photos.crop:
        raise DataError(f"mosaics of CIFAR-10 would be smaller than --crop {photos.crop}; lower --mix-cifar or --crop")
    name = f"{photos.name} (+ {count} mosaics of CIFAR-10, {share:.0%} of the images)"
    return Dataset([*photos.images, *mosaics], name, photos.skipped, photos.crop)


def check_options(dataset: str, size: int, channels: int, crop: int | None, half_scale: bool, mix_cifar: float) -> None:
    """Refuse options of :func:`load_dataset` that do not go together (``ValueError``, one line naming the options)."""
    if (half_scale or mix_cifar) and crop is None:
        raise ValueError("--half-scale and --mix-cifar need --crop: they add images to the random crops")
    if not 0.0 <= mix_cifar < 1.0:
        raise ValueError(f"--mix-cifar is a share of the crops, from 0 up to but not 1; got {mix_cifar:g}")
    if channels not in (1, 3):
        raise ValueError("--channels must be 1 or 3")
    if dataset.lower() == "cifar10" and (size != 32 or channels != 3 or crop is not None):
        raise ValueError("CIFAR-10 images are 32x32 RGB; use --image-size 32 and --channels 3, and no --crop, with it")


def load_dataset(
    dataset: str,
    data_dir: Path | None,
    size: int,
    channels: int,
    crop: int | None = None,
    half_scale: bool = False,
    mix_cifar: float = 0.0,
    download: bool = True,
) -> Dataset:
    """``cifar10`` or a folder path, as the ``--dataset`` option takes it; ``crop``: random windows of full-size
    photos instead of whole resized images (``half_scale``: of the photos downscaled by 2 as well; ``mix_cifar``:
    that share of the images are mosaics of CIFAR-10 from ``data_dir``, :func:`cifar_mosaics`)."""
    check_options(dataset, size, channels, crop, half_scale, mix_cifar)
    if dataset.lower() == "cifar10":
        return cifar10(data_dir, download=download)
    if crop is not None:
        photos = photo_folder(Path(dataset), crop, channels, half_scale)
        return _with_mosaics(photos, cifar10(data_dir, download=download), mix_cifar) if mix_cifar else photos
    return image_folder(Path(dataset), size, channels)
