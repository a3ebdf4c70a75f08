"""Tests of sda_cli.images: round trips, Pillow modes, the 16-bit PNG codec, errors, atomic writes, helpers."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sda_cli import images
from sda_cli.images import (
    ImageError,
    image_files,
    make_grid,
    output_path_for,
    read_image,
    to_model,
    to_pixels,
    write_image,
)


def random_pixels(channels: int, height: int = 5, width: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.rand(channels, height, width, generator=torch.Generator().manual_seed(seed))


def quantised(pixels: torch.Tensor, levels: int) -> torch.Tensor:
    return (torch.round(pixels.double() * levels) / levels).float()


def assert_one_line_error(error: pytest.ExceptionInfo[ImageError], path: Path, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message and "\r" not in message
    assert str(path) in message
    for word in words:
        assert word in message, message


def temporary_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------------
# A reference PNG encoder with every filter type and Adam7 interlacing, written independently of the decoder
# (forward filters are vectorised, the decoder's inverse filters are sequential).

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def filter_rows(lines: np.ndarray, bpp: int, filters: list[int]) -> bytes:
    """Filter rows of bytes (rows × line_bytes, uint8) with the given filter type per row."""
    raw = lines.astype(np.int64)
    out = bytearray()
    for y, kind in enumerate(filters):
        x = raw[y]
        b = raw[y - 1] if y > 0 else np.zeros_like(x)
        a = np.concatenate([np.zeros(bpp, np.int64), x[:-bpp]])
        c = np.concatenate([np.zeros(bpp, np.int64), b[:-bpp]])
        if kind == 0:
            predictor = np.zeros_like(x)
        elif kind == 1:
            predictor = a
        elif kind == 2:
            predictor = b
        elif kind == 3:
            predictor = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
            predictor = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        out += bytes([kind]) + ((x - predictor) % 256).astype(np.uint8).tobytes()
    return bytes(out)


def encode_png(
    samples: np.ndarray, filters: list[int] | None = None, interlace: bool = False, trns: bytes = b""
) -> bytes:
    """Encode H×W×C uint8/uint16 samples; ``filters`` cycles over the rows of every pass."""
    height, width, channels = samples.shape
    depth = 8 * samples.dtype.itemsize
    big = samples.astype(samples.dtype.newbyteorder(">"))
    bpp = channels * samples.dtype.itemsize
    data = b""
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        sub = big[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        lines = np.ascontiguousarray(sub).reshape(sub.shape[0], -1).view(np.uint8)
        cycle = filters or [0]
        data += filter_rows(lines, bpp, [cycle[y % len(cycle)] for y in range(sub.shape[0])])
    header = struct.pack(">IIBBBBB", width, height, depth, COLOUR_TYPE[channels], 0, 0, int(interlace))
    body = png_chunk(b"IHDR", header) + (png_chunk(b"tRNS", trns) if trns else b"")
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IDAT", zlib.compress(data)) + png_chunk(b"IEND", b"")


def random_samples(shape: tuple[int, ...], dtype: type, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # A smooth ramp plus noise, so that every filter meets carries and non-trivial predictions.
    ramp = np.add.outer(np.arange(shape[0]), np.arange(shape[1]))[..., None] * (np.iinfo(dtype).max // 40)
    return ((ramp + rng.integers(0, np.iinfo(dtype).max, shape)) % (np.iinfo(dtype).max + 1)).astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# Conversions


def test_to_model_and_to_pixels_are_inverse_affine_maps() -> None:
    pixels = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(to_model(pixels), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.equal(to_pixels(to_model(pixels)), pixels)


def test_image_error_messages_are_one_line() -> None:
    assert str(ImageError("a.png: bad\r\nthing; do this")) == "a.png: bad  thing; do this"
    assert isinstance(ImageError("x"), ValueError)


# ----------------------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("extension", [".png", ".tif", ".bmp", ".webp"])
def test_8bit_lossless_round_trip_is_exact_to_quantisation(tmp_path: Path, channels: int, extension: str) -> None:
    pixels = random_pixels(channels)
    path = tmp_path / f"image{extension}"
    write_image(path, pixels)
    loaded = read_image(path)
    expected = quantised(pixels, 255)
    if extension == ".webp" and channels == 1:  # WebP has no grey mode: grey comes back as three equal channels
        expected = expected.expand(3, -1, -1)
    assert loaded.pixels.dtype == torch.float32
    assert torch.equal(loaded.pixels, expected)
    assert loaded.bit_depth == 8 and loaded.alpha is None
    assert loaded.mode == ("L" if expected.shape[0] == 1 else "RGB")
    assert loaded.path == path


def test_8bit_write_clips_and_rounds_to_nearest(tmp_path: Path) -> None:
    pixels = torch.tensor([[[-0.5, 0.0, 0.4 / 255, 0.6 / 255, 254.6 / 255, 1.5]]])
    write_image(tmp_path / "a.png", pixels)
    assert np.asarray(Image.open(tmp_path / "a.png")).tolist() == [[0, 0, 0, 1, 255, 255]]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_16bit_png_round_trip_is_exact(tmp_path: Path, channels: int, with_alpha: bool) -> None:
    pixels = random_pixels(channels, seed=1)
    alpha = random_pixels(1, seed=2) if with_alpha else None
    path = tmp_path / "deep.png"
    write_image(path, pixels, alpha, bits=16)
    loaded = read_image(path)
    assert loaded.bit_depth == 16
    assert torch.equal(loaded.pixels, quantised(pixels, 65535))
    if alpha is None:
        assert loaded.alpha is None
    else:
        assert loaded.alpha is not None and torch.equal(loaded.alpha, quantised(alpha, 65535))


def test_16bit_png_files_agree_with_pillow(tmp_path: Path) -> None:
    grey, rgb = random_pixels(1, seed=3), random_pixels(3, seed=4)
    write_image(tmp_path / "grey.png", grey, bits=16)
    write_image(tmp_path / "rgb.png", rgb, bits=16)
    with Image.open(tmp_path / "grey.png") as image:  # Pillow keeps 16-bit grey
        assert image.mode.startswith("I")
        assert np.array_equal(np.asarray(image), np.rint(grey[0].double().numpy() * 65535))
    with Image.open(tmp_path / "rgb.png") as image:  # ... but reads 16-bit colour as its high bytes
        high = np.rint(rgb.double().numpy() * 65535).astype(np.uint16) >> 8
        assert np.array_equal(np.asarray(image), high.transpose(1, 2, 0))


@pytest.mark.parametrize("channels", [1, 3])
def test_npy_round_trip_is_exact_including_values_outside_the_unit_range(tmp_path: Path, channels: int) -> None:
    pixels = torch.randn(channels, 4, 6, generator=torch.Generator().manual_seed(5)) * 3
    path = tmp_path / "exact.npy"
    write_image(path, pixels, alpha=torch.ones(1, 4, 6), bits=8)  # .npy ignores bits and alpha
    stored = np.load(path)
    assert stored.dtype == np.float32 and stored.shape == (4, 6, channels)
    loaded = read_image(path)
    assert torch.equal(loaded.pixels, pixels)
    assert loaded.alpha is None and loaded.bit_depth == 32
    assert loaded.mode == ("L" if channels == 1 else "RGB")
    assert loaded.pixels.min() < 0 and loaded.pixels.max() > 1


def test_npy_reads_hw_arrays_and_float64(tmp_path: Path) -> None:
    array = np.linspace(-1, 2, 12).reshape(3, 4)
    np.save(tmp_path / "grey.npy", array)
    loaded = read_image(tmp_path / "grey.npy")
    assert loaded.mode == "L" and loaded.pixels.shape == (1, 3, 4)
    assert torch.equal(loaded.pixels[0], torch.from_numpy(array.astype(np.float32)))


def test_jpeg_round_trip_is_close_and_drops_alpha(tmp_path: Path) -> None:
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    pixels = torch.stack([x, y, (x + y) / 2])
    path = tmp_path / "photo.jpg"
    write_image(path, pixels, alpha=torch.zeros(1, 32, 32))
    loaded = read_image(path)
    assert loaded.mode == "RGB" and loaded.alpha is None and loaded.bit_depth == 8
    assert (loaded.pixels - pixels).abs().mean() < 0.01
    assert (loaded.pixels - pixels).abs().max() < 0.08


@pytest.mark.parametrize("extension", [".png", ".tif", ".webp"])
@pytest.mark.parametrize("channels", [1, 3])
def test_alpha_is_preserved(tmp_path: Path, extension: str, channels: int) -> None:
    pixels, alpha = random_pixels(channels, seed=6), random_pixels(1, seed=7)
    path = tmp_path / f"clear{extension}"
    write_image(path, pixels, alpha)
    loaded = read_image(path)
    assert loaded.alpha is not None and loaded.alpha.shape == (1, 5, 7)
    assert torch.equal(loaded.alpha, quantised(alpha, 255))
    if extension != ".webp":  # lossless WebP may change the colour of fully transparent pixels
        assert torch.equal(loaded.pixels, quantised(pixels, 255))


def test_bmp_drops_alpha_without_error(tmp_path: Path) -> None:
    write_image(tmp_path / "a.bmp", random_pixels(3), alpha=torch.ones(1, 5, 7))
    assert read_image(tmp_path / "a.bmp").alpha is None


# ----------------------------------------------------------------------------------------------------------------
# Pillow modes


def save(tmp_path: Path, image: Image.Image, name: str, **options: object) -> Path:
    path = tmp_path / name
    image.save(path, **options)
    return path


def test_palette_with_transparency_becomes_rgb_and_alpha(tmp_path: Path) -> None:
    image = Image.new("P", (3, 2))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.putdata([0, 1, 2, 2, 1, 0])
    path = save(tmp_path, image, "p.png", transparency=1)
    loaded = read_image(path)
    assert loaded.mode == "RGB" and loaded.bit_depth == 8
    assert loaded.pixels[:, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert loaded.pixels[:, 0, 2].tolist() == [0.0, 0.0, 1.0]
    assert loaded.alpha is not None and loaded.alpha[0].tolist() == [[1, 0, 1], [1, 0, 1]]


def test_palette_without_transparency_is_rgb_and_grey_palette_is_l(tmp_path: Path) -> None:
    colour = Image.new("P", (2, 1))
    colour.putpalette([10, 20, 30, 40, 50, 60])
    colour.putdata([0, 1])
    loaded = read_image(save(tmp_path, colour, "colour.gif"))
    assert loaded.mode == "RGB" and loaded.alpha is None
    assert torch.equal(loaded.pixels[:, 0, 1], torch.tensor([40, 50, 60]) / torch.tensor(255.0))
    grey = Image.new("P", (2, 1))
    grey.putpalette([0, 0, 0, 200, 200, 200])
    grey.putdata([0, 1])
    loaded = read_image(save(tmp_path, grey, "grey.png"))
    assert loaded.mode == "L" and loaded.pixels.shape == (1, 1, 2)
    assert torch.equal(loaded.pixels[0, 0], torch.tensor([0, 200]) / torch.tensor(255.0))


@pytest.mark.parametrize("name", ["cmyk.tif", "cmyk.jpg"])
def test_cmyk_becomes_rgb(tmp_path: Path, name: str) -> None:
    image = Image.new("CMYK", (4, 4), (10, 20, 30, 40))
    path = save(tmp_path, image, name)
    loaded = read_image(path)
    assert loaded.mode == "RGB" and loaded.pixels.shape == (3, 4, 4)
    expected = torch.tensor(np.asarray(image.convert("RGB"))[0, 0] / 255, dtype=torch.float32)
    assert torch.allclose(loaded.pixels[:, 0, 0], expected, atol=3 / 255)


def test_ycbcr_becomes_rgb(tmp_path: Path) -> None:
    image = Image.new("YCbCr", (3, 3), (100, 120, 140))
    loaded = read_image(save(tmp_path, image, "ycc.tif"))
    expected = np.asarray(image.convert("RGB"))[1, 1] / 255
    assert loaded.mode == "RGB"
    assert torch.allclose(loaded.pixels[:, 1, 1], torch.tensor(expected, dtype=torch.float32))


def test_la_becomes_l_and_alpha(tmp_path: Path) -> None:
    loaded = read_image(save(tmp_path, Image.new("LA", (2, 3), (51, 204)), "la.png"))
    assert loaded.mode == "L" and loaded.pixels.shape == (1, 3, 2)
    assert torch.allclose(loaded.pixels, torch.full((1, 3, 2), 0.2))
    assert loaded.alpha is not None and torch.allclose(loaded.alpha, torch.full((1, 3, 2), 0.8))


def test_bilevel_becomes_l_of_zeros_and_ones(tmp_path: Path) -> None:
    image = Image.new("1", (2, 2))
    image.putdata([0, 1, 1, 0])
    loaded = read_image(save(tmp_path, image, "bw.png"))
    assert loaded.mode == "L" and loaded.bit_depth == 8
    assert loaded.pixels[0].tolist() == [[0.0, 1.0], [1.0, 0.0]]


@pytest.mark.parametrize(("mode", "name"), [("I;16", "grey.png"), ("I;16", "grey.tif"), ("I;16B", "grey.tif")])
def test_16bit_grey_keeps_16bit_precision(tmp_path: Path, mode: str, name: str) -> None:
    values = np.array([[0, 1, 257], [32768, 65534, 65535]], np.uint16)
    image = Image.fromarray(values.astype(">u2") if mode == "I;16B" else values)
    assert image.mode == mode
    loaded = read_image(save(tmp_path, image, name))
    assert loaded.mode == "L" and loaded.bit_depth == 16
    assert torch.equal(loaded.pixels[0], torch.from_numpy(values.astype(np.float32) / np.float32(65535)))


def test_32bit_integer_images_are_scaled(tmp_path: Path) -> None:
    small = read_image(save(tmp_path, Image.fromarray(np.array([[0, 65535]], np.int32)), "small.tif"))
    assert small.bit_depth == 16 and small.pixels[0, 0].tolist() == [0.0, 1.0]
    wide = read_image(save(tmp_path, Image.fromarray(np.array([[-5, 2**31 - 1, 2**30]], np.int32)), "wide.tif"))
    assert wide.bit_depth == 32
    assert torch.allclose(wide.pixels[0, 0], torch.tensor([0.0, 1.0, 0.5]))


def test_float_tiff_keeps_exact_values(tmp_path: Path) -> None:
    values = np.array([[1.5, -0.25], [0.125, 3.0]], np.float32)
    loaded = read_image(save(tmp_path, Image.fromarray(values), "float.tif"))
    assert loaded.mode == "L" and loaded.bit_depth == 32
    assert torch.equal(loaded.pixels[0], torch.from_numpy(values))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_transparent_colour_key_becomes_alpha(tmp_path: Path, mode: str) -> None:
    colour = 7 if mode == "L" else (7, 8, 9)
    image = Image.new(mode, (2, 1), colour)
    image.putpixel((1, 0), 200 if mode == "L" else (200, 8, 9))
    loaded = read_image(save(tmp_path, image, "key.png", transparency=colour))
    assert loaded.mode == mode
    assert loaded.alpha is not None and loaded.alpha[0, 0].tolist() == [0.0, 1.0]


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (3, 2), (0, 0, 0))
    image.putpixel((2, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    loaded = read_image(save(tmp_path, image, "rotated.png", exif=exif))
    assert loaded.pixels.shape == (3, 2, 3)
    assert loaded.pixels[:, 0, 2].tolist() == [1.0, 1.0, 1.0]


# ----------------------------------------------------------------------------------------------------------------
# The PNG codec


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_decoder_matches_pillow_on_8bit_files(tmp_path: Path, channels: int) -> None:
    samples = random_samples((9, 11, channels), np.uint8, seed=channels)
    path = tmp_path / "pillow.png"
    Image.fromarray(samples[..., 0] if channels == 1 else samples).save(path)
    raw = zlib.decompress(b"".join(chunk_bodies(path.read_bytes(), b"IDAT")))
    assert len(set(raw[:: 1 + 11 * channels])) > 1  # Pillow chose several filter types
    assert np.array_equal(images._decode_png(path.read_bytes()), samples)


def chunk_bodies(data: bytes, kind: bytes) -> list[bytes]:
    bodies, position = [], 8
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        if data[position + 4 : position + 8] == kind:
            bodies.append(data[position + 8 : position + 8 + length])
        position += 12 + length
    return bodies


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_decoder_undoes_each_filter_and_interlacing(
    tmp_path: Path, interlace: bool, filter_type: int, dtype: type
) -> None:
    samples = random_samples((10, 9, 3), dtype, seed=filter_type)
    data = encode_png(samples, [filter_type], interlace)
    assert np.array_equal(images._decode_png(data), samples)
    (tmp_path / "x.png").write_bytes(data)  # Pillow, an independent decoder, sees the same (high bytes) pixels
    with Image.open(tmp_path / "x.png") as image:
        assert np.array_equal(np.asarray(image), samples >> 8 if dtype == np.uint16 else samples)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_decoder_breaks_paeth_ties_as_the_specification_says(channels: int) -> None:
    # Few distinct values make the ties between the left, up and upper-left predictors frequent.
    samples = np.random.default_rng(channels).integers(0, 4, (16, 16, channels)).astype(np.uint8)
    assert np.array_equal(images._decode_png(encode_png(samples, [4])), samples)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    channels=st.sampled_from([1, 2, 3, 4]),
    wide=st.booleans(),
    interlace=st.booleans(),
    filters=st.lists(st.integers(0, 4), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_png_codec_round_trips(
    height: int, width: int, channels: int, wide: bool, interlace: bool, filters: list[int], seed: int
) -> None:
    dtype = np.uint16 if wide else np.uint8
    samples = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, (height, width, channels)).astype(dtype)
    assert np.array_equal(images._decode_png(encode_png(samples, filters, interlace)), samples)
    assert np.array_equal(images._decode_png(images._encode_png(samples)), samples)


def test_16bit_rgb_colour_key_becomes_alpha(tmp_path: Path) -> None:
    samples = np.array([[[1000, 2000, 3000], [1000, 2000, 3001]]], np.uint16)
    path = tmp_path / "key16.png"
    path.write_bytes(encode_png(samples, trns=struct.pack(">HHH", 1000, 2000, 3000)))
    loaded = read_image(path)
    assert loaded.bit_depth == 16 and loaded.mode == "RGB"
    assert loaded.alpha is not None and loaded.alpha[0, 0].tolist() == [0.0, 1.0]


def test_16bit_colour_png_from_another_encoder_is_read_at_16_bits(tmp_path: Path) -> None:
    samples = random_samples((6, 5, 4), np.uint16, seed=9)
    path = tmp_path / "rgba16.png"
    path.write_bytes(encode_png(samples, [4, 3, 1], interlace=True))
    loaded = read_image(path)
    assert loaded.mode == "RGB" and loaded.bit_depth == 16
    expected = torch.from_numpy(samples.astype(np.float32) / np.float32(65535)).permute(2, 0, 1)
    assert torch.equal(loaded.pixels, expected[:3]) and loaded.alpha is not None
    assert torch.equal(loaded.alpha, expected[3:])


# ----------------------------------------------------------------------------------------------------------------
# Reading errors


def png_bytes(tmp_path: Path, bits: int = 8) -> bytes:
    write_image(tmp_path / "source.png", random_pixels(3, 16, 16), bits=bits)
    return (tmp_path / "source.png").read_bytes()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.png"
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "no such file")


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as error:
        read_image(tmp_path)
    assert_one_line_error(error, tmp_path, "folder")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "empty")


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_text("hello\nworld\n")
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "not an image", "PNG, JPEG")


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("keep", [0.3, 0.7])
def test_truncated_png(tmp_path: Path, bits: int, keep: float) -> None:
    data = png_bytes(tmp_path, bits)
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "truncated or corrupt")


def test_png_with_bad_crc(tmp_path: Path) -> None:
    data = bytearray(png_bytes(tmp_path, 16))
    data[50] ^= 0xFF  # inside the IDAT chunk's data
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "CRC")


@pytest.mark.parametrize("name", ["bomb.png", "bomb16.png", "bomb.npy", "bomb.jpg"])
def test_max_pixels_guards_against_decompression_bombs(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, np.zeros((10, 20), np.float32))
    else:
        write_image(path, torch.zeros(3, 10, 20), bits=16 if "16" in name else None)
    with pytest.raises(ImageError) as error:
        read_image(path, max_pixels=199)
    assert_one_line_error(error, path, "200 pixels", "--max-pixels")
    assert read_image(path, max_pixels=200).pixels.shape[1:] == (10, 20)
    assert read_image(path, max_pixels=None).pixels.shape[1:] == (10, 20)


def test_default_limit_refuses_a_huge_header_and_leaves_pillow_settings_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path = tmp_path / "huge.png"
    idat = png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + idat + png_chunk(b"IEND", b""))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 12345)
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "10,000,000,000 pixels", "limit of 89,478,485", "--max-pixels")
    assert Image.MAX_IMAGE_PIXELS == 12345
    write_image(tmp_path / "small.png", torch.zeros(3, 2, 2))
    assert read_image(tmp_path / "small.png").pixels.shape == (3, 2, 2)
    assert Image.MAX_IMAGE_PIXELS == 12345


def test_png_with_too_little_image_data(tmp_path: Path) -> None:
    samples = random_samples((4, 4, 3), np.uint16)
    header = struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0)
    idat = png_chunk(b"IDAT", zlib.compress(b"\x00" + samples[0].astype(">u2").tobytes()))  # one row of four
    path = tmp_path / "short.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + idat + png_chunk(b"IEND", b""))
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "image data is truncated (25 of 100 bytes)")


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((0, 5), np.float32), ["zero size"]),
        (np.zeros((4, 0, 3), np.float32), ["zero size"]),
        (np.zeros((2, 3, 4, 5), np.float32), ["shape (2, 3, 4, 5)", "H×W"]),
        (np.zeros((2, 3, 2), np.float32), ["shape (2, 3, 2)"]),
        (np.zeros((2, 3), np.uint8), ["dtype is uint8", "float32"]),
        (np.zeros((2, 3), np.complex64), ["dtype is complex64"]),
        (np.array([[0.5, np.nan], [np.inf, 0.0]], np.float32), ["2 values are NaN or infinite"]),
    ],
)
def test_bad_npy_arrays(tmp_path: Path, array: np.ndarray, words: list[str]) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, *words)


def test_npy_name_without_npy_content(tmp_path: Path) -> None:
    path = tmp_path / "fake.npy"
    path.write_bytes(b"not numpy at all")
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "NUMPY header")


def test_truncated_npy(tmp_path: Path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((8, 8, 3), np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "truncated or corrupt")


def test_float_tiff_with_nan(tmp_path: Path) -> None:
    path = save(tmp_path, Image.fromarray(np.array([[np.nan, 1.0]], np.float32)), "nan.tif")
    with pytest.raises(ImageError) as error:
        read_image(path)
    assert_one_line_error(error, path, "NaN")


# ----------------------------------------------------------------------------------------------------------------
# Writing errors and atomicity


@pytest.mark.parametrize(
    ("name", "pixels", "alpha", "bits", "words"),
    [
        ("a.gif", torch.zeros(3, 2, 2), None, None, ["cannot write .gif", ".png", ".npy"]),
        ("noext", torch.zeros(3, 2, 2), None, None, ["without an extension"]),
        ("a.jpg", torch.zeros(3, 2, 2), None, 16, ["8 bits", ".png or .npy"]),
        ("a.png", torch.zeros(3, 2, 2), None, 12, ["12-bit"]),
        ("a.png", torch.zeros(2, 2, 2), None, None, ["C×H×W", "(2, 2, 2)"]),
        ("a.png", torch.zeros(2, 2), None, None, ["C×H×W"]),
        ("a.png", torch.zeros(3, 2, 2, dtype=torch.uint8), None, None, ["float"]),
        ("a.png", torch.zeros(3, 0, 2), None, None, ["zero size"]),
        ("a.png", torch.full((3, 2, 2), float("nan")), None, None, ["NaN"]),
        ("a.npy", torch.full((3, 2, 2), float("inf")), None, None, ["NaN or infinite"]),
        ("a.png", torch.zeros(3, 2, 2), torch.zeros(1, 3, 2), None, ["alpha is 2×3", "image is 2×2"]),
        ("a.png", torch.zeros(3, 2, 2), torch.zeros(3, 2, 2), None, ["alpha must be"]),
    ],
)
def test_bad_writes_raise_and_leave_the_old_file(
    tmp_path: Path, name: str, pixels: torch.Tensor, alpha: torch.Tensor | None, bits: int | None, words: list[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(b"old contents")
    with pytest.raises(ImageError) as error:
        write_image(path, pixels, alpha, bits=bits)
    assert_one_line_error(error, path, *words)
    assert path.read_bytes() == b"old contents"
    assert temporary_files(tmp_path) == []


def test_writing_onto_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "out.png"
    folder.mkdir()
    with pytest.raises(ImageError) as error:
        write_image(folder, torch.zeros(3, 2, 2))
    assert_one_line_error(error, folder, "is a folder")


def partial_write_then_fail(target: object) -> None:
    """Stand-in for an encoder that dies half-way: write a few bytes to ``target`` (a path or handle), then fail."""
    if hasattr(target, "write"):
        target.write(b"partial")
    else:
        with open(target, "wb") as handle:
            handle.write(b"partial")
    raise OSError("disk full")


@pytest.mark.parametrize(("name", "bits"), [("a.png", None), ("a.png", 16), ("a.npy", None), ("a.jpg", None)])
def test_a_failure_during_the_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, bits: int | None
) -> None:
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, *args, **kwargs: partial_write_then_fail(fp))
    monkeypatch.setattr(np, "save", lambda file, *args, **kwargs: partial_write_then_fail(file))
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: partial_write_then_fail(self))
    path = tmp_path / name
    with open(path, "wb") as handle:
        handle.write(b"old contents")
    with pytest.raises(ImageError) as error:
        write_image(path, torch.zeros(3, 2, 2), bits=bits)
    assert_one_line_error(error, path, "disk full")
    with open(path, "rb") as handle:
        assert handle.read() == b"old contents"
    assert temporary_files(tmp_path) == []


def test_successful_writes_leave_no_temporary_files_and_create_folders(tmp_path: Path) -> None:
    for name, bits in [("a.png", None), ("b.png", 16), ("c.npy", None), ("d.jpg", None), ("e.tiff", None)]:
        write_image(tmp_path / "new" / name, random_pixels(3), random_pixels(1), bits=bits)
    assert sorted(os.listdir(tmp_path / "new")) == ["a.png", "b.png", "c.npy", "d.jpg", "e.tiff"]


def test_overwriting_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    write_image(path, torch.zeros(1, 2, 2))
    write_image(path, torch.ones(1, 2, 2))
    assert torch.equal(read_image(path).pixels, torch.ones(1, 2, 2))


# ----------------------------------------------------------------------------------------------------------------
# image_files, make_grid, output_path_for


def test_image_files_recurses_sorted_and_skips_hidden_and_other_files(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", "sub/c.npy", "sub/deep/d.tif", "notes.txt", ".hidden.png", ".git/e.png", "a0.webp"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = image_files([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.JPG",
        "a0.webp",
        "b.png",
        "sub/c.npy",
        "sub/deep/d.tif",
    ]


def test_image_files_keeps_files_as_given_in_order_once_each(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    for name in ["z.txt", "dir/b.png", "dir/a.png"]:
        (tmp_path / name).write_bytes(b"x")
    found = image_files([tmp_path / "z.txt", str(tmp_path / "dir" / "b.png"), tmp_path / "dir"])
    assert found == [tmp_path / "z.txt", tmp_path / "dir" / "b.png", tmp_path / "dir" / "a.png"]


def test_image_files_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ImageError) as error:
        image_files([tmp_path, missing])
    assert_one_line_error(error, missing, "no such file or folder")


def test_make_grid_is_near_square_with_white_padding() -> None:
    tiles = torch.stack([torch.full((3, 4, 5), i / 10) for i in range(5)])
    grid = make_grid(tiles)
    assert grid.shape == (3, 2 * 4 + 3 * 2, 3 * 5 + 4 * 2)  # 2 rows × 3 columns, padding 2 around and between
    assert torch.equal(grid[:, 2:6, 2:7], tiles[0])
    assert torch.equal(grid[:, 2:6, 9:14], tiles[1])
    assert torch.equal(grid[:, 8:12, 9:14], tiles[4])
    assert torch.all(grid[:, :2] == 1) and torch.all(grid[:, :, 7:9] == 1)
    assert torch.all(grid[:, 8:12, 16:21] == 1)  # the empty sixth cell


def test_make_grid_columns_padding_and_errors() -> None:
    tiles = torch.zeros(4, 1, 3, 3)
    assert make_grid(tiles, columns=4, padding=0).shape == (1, 3, 12)
    assert make_grid(tiles, columns=10, padding=1).shape == (1, 5, 17)
    assert make_grid(tiles, columns=1, padding=1).shape == (1, 17, 5)
    assert torch.all(make_grid(torch.ones(1, 1, 1, 1), pad_value=0.0)[:, 0] == 0)
    for bad in [torch.zeros(0, 1, 3, 3), torch.zeros(1, 3, 3)]:
        with pytest.raises(ValueError):
            make_grid(bad)
    with pytest.raises(ValueError):
        make_grid(tiles, columns=0)


def test_output_path_for(tmp_path: Path) -> None:
    source = Path("in") / "photo.png"
    (tmp_path / "folder").mkdir()
    assert output_path_for(source, tmp_path / "folder", many=False) == tmp_path / "folder" / "photo.png"
    assert output_path_for(source, str(tmp_path / "new") + os.sep, many=False) == tmp_path / "new" / "photo.png"
    assert output_path_for(source, tmp_path / "many", many=True) == tmp_path / "many" / "photo.png"
    assert output_path_for(source, tmp_path / "out.png", many=False) == tmp_path / "out.png"
    (tmp_path / "file.png").write_bytes(b"x")
    assert output_path_for(source, tmp_path / "file.png", many=False) == tmp_path / "file.png"
    with pytest.raises(ImageError) as error:
        output_path_for(source, tmp_path / "file.png", many=True)
    assert_one_line_error(error, tmp_path / "file.png", "folder")
