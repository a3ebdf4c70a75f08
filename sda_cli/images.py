r"""Image files ↔ tensors.

A file holds pixel values :math:`p \in [0, 1]` once decoded: an 8-bit sample :math:`v` is :math:`v/255`, a
16-bit one :math:`v/65535`. The model works in :math:`x = 2p - 1 \in [-1, 1]`; :func:`to_model` and
:func:`to_pixels` convert between the two, and everything else here speaks pixels.

Reading accepts any format Pillow decodes and ``.npy`` arrays of floats (H×W or H×W×C, C = 1 or 3), which
keep their exact values, possibly outside [0, 1]. Colour is returned as L (1 channel) or RGB (3); an alpha
channel, if any, is split off and returned unchanged so that a caller can write it back.

Decisions worth knowing:

* Pixels are kept in the layout they are stored in: EXIF orientation is *not* applied (a denoiser must not
  rotate its input), and ICC profiles are ignored.
* Pillow truncates 16-bit colour PNGs (RGB, RGBA, and grey+alpha) to 8 bits, so those are decoded here by a
  small PNG reader (:func:`_decode_png`) and written by a small PNG writer (:func:`_encode_png`), both with
  full 16-bit precision. 16-bit colour TIFFs are still truncated to 8 bits by Pillow; use PNG or ``.npy``.
* ``.npy`` files hold colour channels only (H×W×C float32, C = 1 for grey); alpha is not stored in them.
* Every failure to read or write becomes an :class:`ImageError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from sda_cli.atomic import atomic_path, write_failure

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "PICTURE_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "ImageError",
    "LoadedImage",
    "image_files",
    "make_grid",
    "output_path_for",
    "read_image",
    "to_model",
    "to_pixels",
    "write_image",
]

DEFAULT_MAX_PIXELS = 89_478_485
"""Largest width × height read by default (Pillow's own guard against decompression bombs)."""

PICTURE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga"}
)
"""File name suffixes (lower case) of the picture formats Pillow decodes: what training folders are searched for."""

IMAGE_EXTENSIONS = PICTURE_EXTENSIONS | {".npy"}
"""File name suffixes (lower case) that :func:`image_files` picks up inside folders: the pictures and float arrays."""

_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".npy": "NPY",
}
WRITE_EXTENSIONS = tuple(_FORMATS)
"""File name suffixes that :func:`write_image` can write."""

_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
_READABLE = "pass a PNG, JPEG, TIFF, WebP or .npy file"


class ImageError(ValueError):
    """An image file that cannot be read or written; the message is one line: what is wrong, what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", " ").replace("\n", " "))


@dataclass(frozen=True)
class LoadedImage:
    """An image as read from a file.

    ``pixels`` is a float32 C×H×W tensor (C = 1 for mode L, 3 for RGB) in [0, 1] for integer files, or the exact
    stored values for float files (``.npy``, Pillow mode F). ``alpha`` is a float32 1×H×W tensor in [0, 1], or
    None. ``bit_depth`` is 8 or 16 for integer samples and 32 for float (or wider integer) samples.
    """

    pixels: Tensor
    alpha: Tensor | None
    mode: Literal["L", "RGB"]
    bit_depth: int
    path: Path


def to_model(pixels: Tensor) -> Tensor:
    """Pixels :math:`p \\in [0, 1]` to model space :math:`x = 2p - 1`."""
    return 2 * pixels - 1


def to_pixels(x: Tensor) -> Tensor:
    """Model space :math:`x` to pixels :math:`p = (x + 1) / 2`."""
    return (x + 1) / 2


# ----------------------------------------------------------------------------------------------------------------
# Reading


def read_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file (any format Pillow reads) or a ``.npy`` float array.

    ``max_pixels`` bounds width × height, checked before decoding (None: no bound). Raises :class:`ImageError`.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file; pass an image file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(32)
        if not head:
            raise ImageError(f"{path}: file is empty (0 bytes); {_READABLE}")
        if head.startswith(b"\x93NUMPY") or path.suffix.lower() == ".npy":
            colour, alpha, depth = _read_npy(path, head, max_pixels)
        elif _is_png16_colour(head):
            colour, alpha, depth = _read_png(path, max_pixels)
        else:
            colour, alpha, depth = _read_pillow(path, max_pixels)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (cannot identify image file); {_READABLE}") from None
    except PermissionError as error:
        raise ImageError(f"{path}: cannot open ({error.strerror}); check the file's permissions") from None
    except MemoryError:
        raise ImageError(f"{path}: image too large for memory; pass a smaller image") from None
    except Exception as error:  # decoders raise many kinds of exception; none may escape unexplained
        raise ImageError(
            f"{path}: cannot decode the image, it may be truncated or corrupt ({type(error).__name__}: {error}); "
            "re-export the file or pass another one"
        ) from None

    height, width = colour.shape[:2]
    if height == 0 or width == 0:
        raise ImageError(f"{path}: image has zero size ({width}×{height}); pass a non-empty image")
    if depth == 32 and not np.isfinite(colour).all():
        bad = int(colour.size - np.isfinite(colour).sum())
        raise ImageError(f"{path}: {bad} values are NaN or infinite; replace them with finite numbers")
    return LoadedImage(
        pixels=_to_tensor(colour),
        alpha=None if alpha is None else _to_tensor(alpha),
        mode="L" if colour.shape[2] == 1 else "RGB",
        bit_depth=depth,
        path=path,
    )


_Decoded = tuple[np.ndarray, "np.ndarray | None", int]  # colour H×W×C float32, alpha H×W×1 or None, bit depth


def _to_tensor(hwc: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(hwc.transpose(2, 0, 1), dtype=np.float32, order="C"))  # a copy


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}×{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            "(a guard against decompression bombs); if you trust the file, raise it with --max-pixels"
        )


def _split_alpha(samples: np.ndarray, scale: float) -> _Decoded:
    """H×W×C integer samples (C = 1..4, alpha last when C is 2 or 4) to pixels and alpha in [0, 1]."""
    values = samples.astype(np.float32) / np.float32(scale)
    if values.shape[2] in (2, 4):
        return values[..., :-1], values[..., -1:], 16 if scale > 255 else 8
    return values, None, 16 if scale > 255 else 8


def _read_npy(path: Path, head: bytes, max_pixels: int | None) -> _Decoded:
    if not head.startswith(b"\x93NUMPY"):
        raise ImageError(f"{path}: not a NumPy .npy file (no NUMPY header); save arrays with numpy.save")
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    if dtype.kind != "f":
        raise ImageError(
            f"{path}: .npy dtype is {dtype}, not float; save float32 pixel values in [0, 1] (e.g. array / 255)"
        )
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise ImageError(
            f"{path}: .npy shape {tuple(shape)} is not an image; expected H×W or H×W×C with C = 1 or 3 "
            "(colour channels only)"
        )
    _check_pixels(path, shape[1], shape[0], max_pixels)
    array = np.load(path, allow_pickle=False)
    return (array if array.ndim == 3 else array[..., None]).astype(np.float32), None, 32


# Pillow modes converted before reading samples; P and PA are handled apart (palette may be grey).
_PILLOW_CONVERT = {
    "1": "L",
    "La": "LA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
}

_pillow_limit_lock = threading.Lock()


@contextlib.contextmanager
def _no_pillow_limit() -> Iterator[None]:
    """Turn off Pillow's global pixel limit while opening: ``read_image`` applies its own ``max_pixels``."""
    with _pillow_limit_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _read_pillow(path: Path, max_pixels: int | None) -> _Decoded:
    # Multi-frame files (GIF, TIFF) give their first frame. No ImageOps.exif_transpose: see module docstring.
    with _no_pillow_limit(), Image.open(path) as image:
        _check_pixels(path, image.width, image.height, max_pixels)
        image.load()
        return _from_pillow(image)


def _from_pillow(image: Image.Image) -> _Decoded:
    mode = image.mode
    if mode.startswith("I;16"):  # I;16, I;16B, I;16L, I;16N: 16-bit grey
        return _split_alpha(np.asarray(image)[..., None], 65535)
    if mode == "I":  # 32-bit signed integers; 16-bit data widened by some decoders keeps the 16-bit scale
        values = np.asarray(image).astype(np.float64)[..., None]
        if values.size == 0 or (values.min() >= 0 and values.max() <= 65535):
            return (values / 65535).astype(np.float32), None, 16
        return np.clip(values / (2**31 - 1), 0, 1).astype(np.float32), None, 32
    if mode == "F":  # 32-bit float: exact values, like .npy
        return np.asarray(image, dtype=np.float32)[..., None], None, 32
    if mode in ("P", "PA"):
        transparent = mode == "PA" or image.info.get("transparency") is not None
        samples = np.asarray(image.convert("RGBA" if transparent else "RGB"))
        rgb = samples[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():  # grey palette → L
            samples = samples[..., [0, 3]] if transparent else samples[..., :1]
        return _split_alpha(samples, 255)
    if mode in ("L", "RGB") and image.info.get("transparency") is not None:
        image = image.convert(mode + "A")  # a transparent colour key becomes an alpha channel
    elif mode in _PILLOW_CONVERT:
        image = image.convert(_PILLOW_CONVERT[mode])
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ValueError(f"unsupported Pillow mode {image.mode}")
    samples = np.asarray(image, dtype=np.uint8)
    return _split_alpha(samples if samples.ndim == 3 else samples[..., None], 255)


# ----------------------------------------------------------------------------------------------------------------
# A small PNG codec for 8/16-bit grey, grey+alpha, RGB and RGBA (PNG specification, 2nd edition, W3C 2003).
# Pillow reads 16-bit colour PNGs only as 8-bit, so read_image uses this one for them.

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}  # colour type → samples per pixel
_PNG_COLOUR_TYPE = {channels: kind for kind, channels in _PNG_CHANNELS.items()}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _is_png16_colour(head: bytes) -> bool:
    """A 16-bit PNG of colour type 2, 4 or 6, judged from its first 26 bytes (signature and IHDR)."""
    is_png = head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and len(head) > 25
    return is_png and head[24] == 16 and head[25] in (2, 4, 6)


def _read_png(path: Path, max_pixels: int | None) -> _Decoded:
    samples = _decode_png(path.read_bytes(), lambda width, height: _check_pixels(path, width, height, max_pixels))
    return _split_alpha(samples, 65535 if samples.dtype.itemsize == 2 else 255)


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    position = len(_PNG_SIGNATURE)
    while True:
        if position + 12 > len(data):
            raise ValueError("PNG file is truncated (no IEND chunk)")
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        crc = data[position + 8 + length : position + 12 + length]
        if len(crc) < 4:
            raise ValueError(f"PNG file is truncated (in chunk {kind!r})")
        if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
            raise ValueError(f"PNG chunk {kind!r} fails its CRC check")
        yield kind, body
        if kind == b"IEND":
            return
        position += 12 + length


def _decode_png(data: bytes, check_size: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Decode a PNG of bit depth 8 or 16 and colour type 0, 2, 4 or 6 to H×W×C samples (uint8 or uint16).

    A transparent colour key (tRNS) of a grey or RGB image becomes an alpha channel. ``check_size(width,
    height)`` is called before decompressing.
    """
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    chunks = _png_chunks(data)
    kind, header = next(chunks)
    if kind != b"IHDR" or len(header) != 13:
        raise ValueError("PNG file does not start with an IHDR chunk")
    width, height, depth, colour_type, compression, filtering, interlace = struct.unpack(">IIBBBBB", header)
    if depth not in (8, 16) or colour_type not in _PNG_CHANNELS or compression or filtering or interlace > 1:
        raise ValueError(f"unsupported PNG (bit depth {depth}, colour type {colour_type}, interlace {interlace})")
    if check_size is not None:
        check_size(width, height)
    idat: list[bytes] = []
    key = None
    for kind, body in chunks:
        if kind == b"IDAT":
            idat.append(body)
        elif kind == b"tRNS" and colour_type in (0, 2):
            key = body
    channels = _PNG_CHANNELS[colour_type]
    dtype = np.dtype(">u2") if depth == 16 else np.dtype("u1")
    pixel_bytes = channels * dtype.itemsize
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    shapes = [((height - y0 + dy - 1) // dy, (width - x0 + dx - 1) // dx) for x0, y0, dx, dy in passes]
    expected = sum(rows * (1 + columns * pixel_bytes) for rows, columns in shapes if rows and columns)
    raw = zlib.decompressobj().decompress(b"".join(idat), expected)
    if len(raw) < expected:
        raise ValueError(f"PNG image data is truncated ({len(raw):,} of {expected:,} bytes)")

    image = np.empty((height, width, channels), dtype)
    offset = 0
    for (x0, y0, dx, dy), (rows, columns) in zip(passes, shapes, strict=True):
        if not (rows and columns):
            continue
        size = rows * (1 + columns * pixel_bytes)
        lines = _unfilter(raw[offset : offset + size], rows, columns * pixel_bytes, pixel_bytes)
        image[y0::dy, x0::dx] = lines.view(dtype).reshape(rows, columns, channels)
        offset += size
    image = image.astype(np.uint16 if depth == 16 else np.uint8)
    if key is not None and len(key) == 2 * channels:
        colour_key = np.frombuffer(key, ">u2").astype(image.dtype)
        opaque = (image != colour_key).any(axis=2, keepdims=True)
        image = np.concatenate([image, np.where(opaque, np.iinfo(image.dtype).max, 0).astype(image.dtype)], axis=2)
    return image


def _unfilter(data: bytes, rows: int, line_bytes: int, pixel_bytes: int) -> np.ndarray:
    """Undo PNG filters 0-4 (None, Sub, Up, Average, Paeth) scanline by scanline."""
    out = np.zeros((rows, line_bytes), np.uint8)
    prior = np.zeros(line_bytes, np.uint8)
    for y in range(rows):
        start = y * (line_bytes + 1)
        kind = data[start]
        line = np.frombuffer(data, np.uint8, line_bytes, start + 1)
        if kind == 0:
            current = line
        elif kind == 1:  # Sub: running sum over pixels, modulo 256
            current = np.cumsum(line.reshape(-1, pixel_bytes), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            current = line + prior
        elif kind in (3, 4):
            current = np.frombuffer(_unfilter_sequential(kind, line.tobytes(), prior.tobytes(), pixel_bytes), np.uint8)
        else:
            raise ValueError(f"PNG scanline {y} has unknown filter type {kind}")
        out[y] = current
        prior = out[y]
    return out


def _unfilter_sequential(kind: int, line: bytes, prior: bytes, bpp: int) -> bytearray:
    """Average (3) and Paeth (4) depend on the byte just decoded, so they run byte by byte."""
    current = bytearray(line)
    for i in range(len(current)):
        a = current[i - bpp] if i >= bpp else 0
        b = prior[i]
        if kind == 3:
            current[i] = (current[i] + ((a + b) >> 1)) & 0xFF
            continue
        c = prior[i - bpp] if i >= bpp else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        current[i] = (current[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return current


def _encode_png(samples: np.ndarray) -> bytes:
    """Encode H×W×C samples (uint8 or uint16; C = 1..4, alpha last for 2 and 4) as a PNG, filter type 0."""
    height, width, channels = samples.shape
    depth = 8 * samples.dtype.itemsize
    rows = samples.astype(samples.dtype.newbyteorder(">")).reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    header = struct.pack(">IIBBBBB", width, height, depth, _PNG_COLOUR_TYPE[channels], 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------------------------------------
# Writing


def write_image(
    path: str | os.PathLike[str], pixels: Tensor, alpha: Tensor | None = None, bits: int | None = None
) -> None:
    """Write C×H×W pixels (C = 1 or 3) and an optional 1×H×W alpha, in the format named by the extension.

    ``.png``, ``.jpg``/``.jpeg``, ``.webp`` (lossless), ``.tif``/``.tiff`` and ``.bmp`` store 8 bits per sample
    (``bits`` None or 8); ``.png`` also stores 16 (``bits=16``). Integer formats clip to [0, 1] and round to the
    nearest level. ``.npy`` stores the exact float32 colour values, H×W×C, and ignores ``bits`` and ``alpha``.
    Alpha is kept by PNG, WebP and TIFF and dropped without error by JPEG and BMP. The write is atomic: on any
    failure an existing file at ``path`` is left as it was. Raises :class:`ImageError`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    kind = _FORMATS.get(suffix)
    if kind is None:
        raise ImageError(
            f"{path}: cannot write {suffix or 'files without an extension'}; use one of {', '.join(WRITE_EXTENSIONS)}"
        )
    if path.is_dir():
        raise ImageError(f"{path}: is a folder; pass a file name for the output image")
    colour = _as_hwc(path, "pixels", pixels, (1, 3))
    alpha_hwc = None if alpha is None else _as_hwc(path, "alpha", alpha, (1,))
    if alpha_hwc is not None and alpha_hwc.shape[:2] != colour.shape[:2]:
        raise ImageError(
            f"{path}: alpha is {alpha_hwc.shape[1]}×{alpha_hwc.shape[0]} but the image is "
            f"{colour.shape[1]}×{colour.shape[0]}; pass an alpha of the image's size"
        )
    if kind != "NPY" and bits not in (None, 8, 16):
        raise ImageError(f"{path}: cannot write {bits}-bit samples; pass bits=8 or 16 (or write .npy for floats)")
    if kind not in ("NPY", "PNG") and bits == 16:
        raise ImageError(f"{path}: {kind} stores 8 bits per sample; write .png or .npy for 16-bit output")

    try:
        with atomic_path(path) as temporary:
            if kind == "NPY":
                with open(temporary, "wb") as handle:
                    np.save(handle, colour, allow_pickle=False)
                return
            if kind not in _ALPHA_FORMATS:
                alpha_hwc = None
            samples = colour if alpha_hwc is None else np.concatenate([colour, alpha_hwc], axis=2)
            if bits == 16:
                temporary.write_bytes(_encode_png(_quantise(samples, np.uint16)))
            else:
                _save_pillow(_quantise(samples, np.uint8), temporary, kind)
    except ImageError:
        raise
    except OSError as error:
        reason, advice = write_failure(error)
        raise ImageError(f"{path}: cannot write the image ({reason}); {advice}") from None
    except (ValueError, TypeError, KeyError) as error:
        raise ImageError(
            f"{path}: cannot write the image ({type(error).__name__}: {error}); check the folder"
        ) from None


def _as_hwc(path: Path, name: str, tensor: Tensor, channels: tuple[int, ...]) -> np.ndarray:
    if (
        not isinstance(tensor, Tensor)
        or not tensor.is_floating_point()
        or tensor.ndim != 3
        or tensor.shape[0] not in channels
    ):
        shape = tuple(tensor.shape) if hasattr(tensor, "shape") else type(tensor).__name__
        wanted = " or ".join(map(str, channels))
        raise ImageError(f"{path}: {name} must be a float C×H×W tensor with C = {wanted}, got {shape}; nothing written")
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise ImageError(f"{path}: {name} has zero size {tuple(tensor.shape)}; nothing written")
    array = tensor.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)
    if not np.isfinite(array).all():
        raise ImageError(f"{path}: {name} contain NaN or infinite values; nothing written")
    return np.ascontiguousarray(array)


def _quantise(samples: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.rint(np.clip(samples, 0, 1) * top).astype(dtype)


def _save_pillow(samples: np.ndarray, destination: Path, kind: str) -> None:
    image = Image.fromarray(samples[..., 0] if samples.shape[2] == 1 else samples)
    options: dict[str, object] = {}
    if kind == "JPEG":
        options = {"quality": 95, "subsampling": 0}
    elif kind == "WEBP":
        options = {"lossless": True}
        if image.mode in ("L", "LA"):  # WebP has no grey modes
            image = image.convert("RGBA" if image.mode == "LA" else "RGB")
    image.save(destination, format=kind, **options)


# ----------------------------------------------------------------------------------------------------------------
# Files, grids and output names


def image_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand folders into the image files under them; keep files as given.

    Folders are searched recursively for the suffixes in :data:`IMAGE_EXTENSIONS` (any case), skipping hidden
    files and folders, in sorted order. A file met twice is listed once. A folder without images adds nothing.
    Raises :class:`ImageError` for a path that does not exist.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            candidates = _images_under(path)
        elif path.exists():
            candidates = [path]
        else:
            raise ImageError(f"{path}: no such file or folder; check the path")
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found


def _images_under(folder: Path) -> list[Path]:
    files = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        files += [
            Path(root, name)
            for name in names
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        ]
    return sorted(files)


def make_grid(images: Tensor, columns: int | None = None, padding: int = 2, *, pad_value: float = 1.0) -> Tensor:
    """Tile N×C×H×W images into one C×H'×W' image, row by row.

    ``columns`` defaults to ⌈√N⌉ (a near-square grid). ``padding`` pixels separate the tiles and frame the grid;
    they and any empty cells are ``pad_value``, white in pixel units by default.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"make_grid needs a non-empty N×C×H×W tensor, got shape {tuple(images.shape)}")
    if padding < 0 or (columns is not None and columns < 1):
        raise ValueError(f"make_grid needs columns ≥ 1 and padding ≥ 0, got {columns} and {padding}")
    count, channels, height, width = images.shape
    columns = min(columns or math.ceil(math.sqrt(count)), count)
    rows = math.ceil(count / columns)
    grid = images.new_full(
        (channels, rows * (height + padding) + padding, columns * (width + padding) + padding), pad_value
    )
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[:, top : top + height, left : left + width] = image
    return grid


def output_path_for(input_path: str | os.PathLike[str], output: str | os.PathLike[str], many: bool) -> Path:
    """Where to write the result for ``input_path``.

    ``output/<input file name>`` when ``output`` is an existing folder, ends with a path separator, or ``many``
    inputs share it; otherwise ``output`` itself. Raises :class:`ImageError` when a folder is needed but
    ``output`` is an existing file.
    """
    text = os.fspath(output)
    target = Path(text)
    separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
    if many or text.endswith(separators) or target.is_dir():
        if target.exists() and not target.is_dir():
            raise ImageError(f"{target}: is a file, but the output must be a folder here; pass a folder")
        return target / Path(input_path).name
    return target
