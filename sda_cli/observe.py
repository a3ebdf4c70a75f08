r"""The forward model in pixel units: the operator a command's options name, and observations of images.

:func:`observe` draws :math:`y = A p + \sigma n`, :math:`n \sim \mathcal{N}(0, I)`, with the values :math:`A p` never
carries (a mask's missing pixels) set to 0: what ``sda noise`` (:math:`A = I`) and ``sda degrade`` write, and what
``sda restore`` inverts. :func:`operator_source` turns the operator options (blur, kernel file, block average, mask
file or folder of masks) into the operator of each input file, checking the files once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sda_cli.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, read_image
from sda_cli.operators import Identity, Kernel, LinearOperator, make_operator

__all__ = ["observe", "operator_source", "read_kernel", "read_mask"]


def observe(
    pixels: Tensor, sigma: float, operator: LinearOperator | None = None, *, generator: torch.Generator | None = None
) -> Tensor:
    r""":math:`A p + \sigma n` for images ``(B, C, H, W)`` in pixel units, missing values at 0 (module docstring)."""
    operator = operator or Identity()
    noise = sigma * torch.randn(operator.out_shape(pixels.shape), generator=generator)
    return operator.observed(operator(pixels) + noise.to(pixels))


def read_kernel(path: Path) -> Tensor:
    """A kernel file (``.npy``): a finite 2-D array with odd sides that does not sum to 0."""
    try:
        kernel = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float64))
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ValueError(
            f"kernel {path}: cannot read it as a NumPy array ({message}); save one with numpy.save"
        ) from None
    try:
        Kernel(kernel)
    except ValueError as error:
        raise ValueError(f"kernel {path}: {error}") from None
    if abs(float(kernel.sum())) <= 1e-6 * float(kernel.abs().sum()):
        raise ValueError(
            f"kernel {path}: the kernel sums to 0, so the observation loses the image's mean brightness and "
            "cannot be stored as pixels; give a kernel that sums to 1 (kernel / kernel.sum())"
        )
    return kernel


def read_mask(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """A mask file: 1 (observed) where it is white, at least 0.5, 0 elsewhere; one channel when all are equal."""
    mask = (read_image(path, max_pixels=max_pixels).pixels >= 0.5).double()
    return mask[:1] if bool((mask == mask[:1]).all()) else mask


def operator_source(
    *,
    blur: float | None = None,
    kernel: Path | None = None,
    scale: int | None = None,
    decimate: int | None = None,
    mask: Path | None = None,
    boundary: str = "reflect",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Callable[[Path], LinearOperator]:
    """The observation operator of each input file, from the operator options (:func:`make_operator`: the blur and the
    kernel extend the image by ``boundary``); a bad blur, kernel or mask file is
    refused now (``ValueError``), a folder of masks is looked up per input (its mask has the input's file name, or
    its stem; none found: :class:`~sda_cli.images.ImageError` for that input)."""
    if blur is not None and not 0 < blur <= 100:
        raise ValueError(f"blur must be a positive number of pixels up to 100, such as 1.5, not {blur}")
    weights = None if kernel is None else read_kernel(kernel)
    shared = None
    if mask is not None and not mask.is_dir():
        try:
            shared = read_mask(mask, max_pixels)
        except ImageError as error:
            raise ValueError(f"mask {error}") from None
    if boundary != "reflect" and blur is None and kernel is None:
        raise ValueError("boundary is for a blur or a kernel: add --blur or --kernel, or leave the boundary out")
    if decimate is not None and blur is None and kernel is None:
        raise ValueError(
            "decimate keeps every K-th pixel of a blurred image; without --blur or --kernel it aliases: "
            "add one, or use --scale for a block average"
        )
    stages = dict(blur=blur, kernel=weights, scale=scale, decimate=decimate, boundary=boundary)
    make_operator(**stages)  # a bad scale is refused now, not per file

    def operator_for(source: Path) -> LinearOperator:
        chosen = shared
        if mask is not None and shared is None:
            names = [mask / source.name, *sorted(mask.glob(f"{source.stem}.*"))]
            found = [path for path in names if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS]
            if not found:
                raise ImageError(f"{source}: no mask named {source.name} in {mask}; add one, or pass one --mask file")
            chosen = read_mask(found[0], max_pixels)
        return make_operator(**stages, mask=chosen)

    return operator_for
