r"""Linear observation operators :math:`A` on images ``(B, C, H, W)``, with their exact transposes.

An observation is :math:`y = A x + \sigma_y n`. Each operator gives :math:`A x` (``op(x)``), :math:`A^\top y`
(``op.adjoint(y)``, the exact transpose: :math:`\langle A x, y \rangle = \langle x, A^\top y \rangle`) and the shape
of :math:`A x` (``op.out_shape``):

* :class:`Kernel`: the convolution :math:`(A x)_{ij} = \sum_{a, b} k_{ab}\, \tilde{x}_{i + r - a,\, j + s - b}` with an
  odd-sided ``(2r + 1) × (2s + 1)`` kernel centred at :math:`(r, s)`, a true convolution (the kernel is flipped, as in
  ``scipy.ndimage.convolve``; for a symmetric kernel convolution and correlation agree). :math:`\tilde{x}` extends the
  image past its edges by one of two boundaries (:func:`extension_indices`): ``reflect`` (the default), the edge pixel
  repeated, ``d c b a | a b c d | d c b a``, which is ``scipy.ndimage``'s ``mode="reflect"`` (and not
  ``torch.nn.functional.pad``'s ``"reflect"``, which omits the edge pixel); or ``circular``, the image repeated
  periodically, ``a b c d | a b c d | a b c d``, ``scipy.ndimage``'s ``mode="wrap"``, which DPIR's scripts use
  (Zhang et al., 2021). The extension is an index map folded into the matrices of separable 1-D convolutions, so
  :math:`A^\top` is their transpose;
* :class:`Blur`: the kernel :math:`k_{ij} \propto \exp(-(i^2 + j^2) / 2S^2)`, :math:`|i|, |j| \leq \lceil 3S \rceil`,
  normalised to sum 1;
* :class:`Downsample`: each :math:`K \times K` block replaced by its average; :math:`A^\top` spreads each value over
  its block divided by :math:`K^2`, so :math:`A A^\top = I / K^2`;
* :class:`Decimate`: every :math:`K`-th pixel of each row and column kept, from the first, ``x[..., ::K, ::K]``:
  blurred first (:class:`Blur` or :class:`Kernel`), DPIR's "classical" super-resolution degradation
  :math:`y = (k \otimes x)\downarrow_K`; :math:`A^\top` puts each value back at its pixel and zeros elsewhere, so
  :math:`A A^\top = I`;
* :class:`Mask`: :math:`A x = m \odot x` with :math:`m \in \{0, 1\}`, one channel or one per channel;
  :math:`A^\top = A`. Missing values of an observation are zeros: :meth:`LinearOperator.observed` sets them to 0;
* :class:`Compose`: operators applied in the order given; :func:`make_operator` builds the composition in the order
  blur, kernel, downsample, decimate, mask of ``sda degrade``.

Every operator but a mask (and a kernel of rank above 1) acts on rows and columns apart, :math:`A x = M x N^\top` per
channel (:meth:`LinearOperator.axis_matrices`), and so does a composition of such operators: the data steps of
:mod:`sda_cli.proximal` solve with them exactly.

:func:`observation_shape` checks an observation against the images an operator takes, :func:`operator_matrix` gives
the dense matrix of an operator on small images, and :func:`conjugate_gradient` solves the symmetric positive
(semi-)definite systems of the posterior methods, one per image of a batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BOUNDARIES",
    "Blur",
    "Compose",
    "Decimate",
    "Downsample",
    "Identity",
    "Kernel",
    "LinearOperator",
    "Mask",
    "conjugate_gradient",
    "convolution_matrix",
    "convolve_axis",
    "extension_indices",
    "linear_observation",
    "make_operator",
    "minimal_residual",
    "observation_shape",
    "operator_matrix",
    "reflect_indices",
    "stages",
]

BOUNDARIES = ("reflect", "circular")
"""How a convolution extends the image past its edges (module docstring)."""


def _image_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    shape = tuple(int(n) for n in shape)
    if len(shape) != 4:
        raise ValueError(f"expected images shaped (B, C, H, W), got shape {shape}: add a batch dimension with x[None]")
    return shape  # type: ignore[return-value]


class LinearOperator:
    r"""A linear map :math:`A` of images ``(B, C, H, W)`` to observations, with its transpose."""

    def __call__(self, x: Tensor) -> Tensor:
        """:math:`A x`."""
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        r""":math:`A^\top y`."""
        raise NotImplementedError

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of :math:`A x` for images of ``shape``; raises ``ValueError`` for images it cannot take."""
        return _image_shape(shape)

    def observed(self, y: Tensor) -> Tensor:
        """``y`` with the values that :math:`A x` never carries (a mask's missing pixels) set to 0."""
        return y

    def axis_matrices(self, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor] | None:
        r"""The matrices :math:`(M, N)` with :math:`A x = M x N^\top` for each channel of images of
        ``height × width``, in ``like``'s dtype and device; ``None`` when :math:`A` does not act on rows and columns
        apart (a mask, a kernel of rank above 1)."""
        return None


class Identity(LinearOperator):
    """:math:`A = I`: denoising."""

    def __call__(self, x: Tensor) -> Tensor:
        _image_shape(x.shape)
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def axis_matrices(self, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor] | None:
        eye = torch.eye(max(height, width), dtype=like.dtype, device=like.device)
        return eye[:height, :height], eye[:width, :width]


def reflect_indices(size: int, before: int, after: int) -> Tensor:
    """The source index of each position of an axis of ``size`` extended by ``before`` and ``after`` positions,
    mirrored with the edge repeated (``d c b a | a b c d | d c b a``, period ``2 size``), as ``scipy.ndimage``'s
    ``mode="reflect"`` does for any extension, also one longer than the axis."""
    position = torch.arange(-before, size + after) % (2 * size)
    return torch.where(position < size, position, 2 * size - 1 - position)


def extension_indices(size: int, before: int, after: int, boundary: str) -> Tensor:
    """The source index of each position of an axis of ``size`` extended by ``before`` and ``after`` positions:
    :func:`reflect_indices` for ``reflect``, the position modulo ``size`` for ``circular``."""
    if boundary == "circular":
        return torch.arange(-before, size + after) % size
    if boundary == "reflect":
        return reflect_indices(size, before, after)
    raise ValueError(f"the boundary must be one of {', '.join(BOUNDARIES)}, not {boundary!r}")


def convolution_matrix(taps: Tensor, size: int, boundary: str = "reflect") -> Tensor:
    r"""The ``size × size`` matrix of the 1-D convolution with odd-length ``taps``:
    :math:`(M x)_i = \sum_a \text{taps}_a\, \tilde{x}_{i + r - a}`, each extended position's weight added onto the
    pixel it copies (:func:`extension_indices`)."""
    length = taps.shape[0]
    radius = length // 2
    source = extension_indices(size, radius, radius, boundary).to(taps.device)
    offsets = (
        torch.arange(size, device=taps.device)[None, :] + 2 * radius - torch.arange(length, device=taps.device)[:, None]
    )
    rows = torch.arange(size, device=taps.device).expand(length, size)
    matrix = taps.new_zeros(size, size)
    return matrix.index_put_(
        (rows.flatten(), source[offsets].flatten()), taps[:, None].expand(length, size).flatten(), accumulate=True
    )


def convolve_axis(x: Tensor, taps: Tensor, dim: int, boundary: str, *, transpose: bool = False) -> Tensor:
    r""":math:`M x` (or :math:`M^\top x` with ``transpose``) along ``dim`` of ``x``, :math:`M` the
    :func:`convolution_matrix` of ``taps``, in one multiply-add per tap and pixel: the axis extended by
    :func:`extension_indices`, then :math:`(M x)_i = \sum_b \text{taps}_{2r - b}\, \tilde{x}_{i + b}`; the transpose
    adds :math:`\text{taps}_{2r - b}\, y` at each offset :math:`b` of the extended axis and folds each extended
    position back onto the pixel it copies."""
    x = x.contiguous()  # one memory layout, so that the sums round the same for any input's strides
    size, radius = x.shape[dim], taps.shape[0] // 2
    source = extension_indices(size, radius, radius, boundary).to(x.device)
    weights = taps.flip(0).tolist()
    if not transpose:
        extended = x.index_select(dim, source)
        out = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
        for offset, weight in enumerate(weights):
            out.add_(extended.narrow(dim, offset, size), alpha=weight)
        return out
    shape = list(x.shape)
    shape[dim] = size + 2 * radius
    extended = x.new_zeros(shape)
    for offset, weight in enumerate(weights):
        extended.narrow(dim, offset, size).add_(x, alpha=weight)
    return torch.zeros(x.shape, dtype=x.dtype, device=x.device).index_add_(dim, source, extended)


class Kernel(LinearOperator):
    r"""Convolution with an odd-sided 2-D kernel, applied as given to each channel, with ``reflect`` (the default) or
    ``circular`` boundaries (module docstring). The kernel is not normalised.

    Computed separably: the singular value decomposition :math:`k = \sum_r s_r u_r v_r^\top` (one term for a
    Gaussian, at most the shorter side in general; terms below the rounding level of the largest are dropped) makes
    :math:`A x = \sum_r R_r\, x\, C_r^\top` with :math:`R_r, C_r` the 1-D convolutions by :math:`s_r u_r` and
    :math:`v_r` along the columns and rows (:func:`convolution_matrix`), and
    :math:`A^\top y = \sum_r R_r^\top y\, C_r`, each product computed as a 1-D convolution (:func:`convolve_axis`:
    the taps' length in multiply-adds per pixel, where the dense matrices cost the image's side). The matrices
    themselves serve the exact data step (:mod:`sda_cli.proximal`).
    """

    def __init__(self, kernel: Tensor | Sequence[Sequence[float]], boundary: str = "reflect") -> None:
        if boundary not in BOUNDARIES:
            raise ValueError(f"the boundary must be one of {', '.join(BOUNDARIES)}, not {boundary!r}")
        self.boundary = boundary
        k = torch.as_tensor(kernel, dtype=torch.float64)
        if k.ndim != 2:
            raise ValueError(f"a kernel must be a 2-D array, got shape {tuple(k.shape)}: save a single 2-D array")
        if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
            raise ValueError(
                f"a kernel needs odd sides so that it has a centre, got {k.shape[0]}×{k.shape[1]}: "
                "pad it with a row or column of zeros on one side"
            )
        if not bool(k.isfinite().all()):
            raise ValueError("the kernel holds NaN or infinite values: give finite numbers")
        if not bool((k != 0).any()):
            raise ValueError("the kernel is all zeros, which observes nothing: give a kernel with a non-zero entry")
        self.kernel = k
        u, s, vh = torch.linalg.svd(k)
        rank = int((s > s[0] * max(k.shape) * torch.finfo(torch.float64).eps).sum())
        self.factors = [(s[i] * u[:, i], vh[i]) for i in range(rank)]
        self._matrices: dict[tuple[int, int, torch.dtype, torch.device], list[tuple[Tensor, Tensor]]] = {}

    def matrices(self, height: int, width: int, like: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The pairs :math:`(R_r, C_r)` for images of ``height × width``, in ``like``'s dtype and device (cached)."""
        key = (height, width, like.dtype, like.device)
        if key not in self._matrices:
            axis = lambda taps, size: convolution_matrix(taps, size, self.boundary).to(like)  # noqa: E731
            self._matrices[key] = [(axis(u, height), axis(v, width)) for u, v in self.factors]
        return self._matrices[key]

    def axis_matrices(self, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor] | None:
        pairs = self.matrices(height, width, like)
        return pairs[0] if len(pairs) == 1 else None

    def __call__(self, x: Tensor) -> Tensor:
        _image_shape(x.shape)
        return sum(self._term(x, u, v, transpose=False) for u, v in self.factors)  # type: ignore[return-value]

    def adjoint(self, y: Tensor) -> Tensor:
        _image_shape(y.shape)
        return sum(self._term(y, u, v, transpose=True) for u, v in self.factors)  # type: ignore[return-value]

    def _term(self, x: Tensor, u: Tensor, v: Tensor, *, transpose: bool) -> Tensor:
        """:math:`R x C^\top` (or :math:`R^\top x C`) for one factor: a convolution along each axis."""
        columns = convolve_axis(x, u, -2, self.boundary, transpose=transpose)
        return convolve_axis(columns, v, -1, self.boundary, transpose=transpose)


def gaussian_kernel(sigma: float) -> Tensor:
    r""":math:`\exp(-(i^2 + j^2) / 2S^2)` on :math:`|i|, |j| \leq \lceil 3S \rceil`, normalised to sum 1 (float64)."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    return kernel / kernel.sum()


class Blur(Kernel):
    """Gaussian blur of standard deviation ``sigma`` pixels, ``reflect`` or ``circular`` boundaries (module
    docstring)."""

    def __init__(self, sigma: float, boundary: str = "reflect") -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 < sigma < math.inf:
            raise ValueError(f"the blur's standard deviation must be a positive number of pixels, got {sigma!r}")
        self.sigma = float(sigma)
        super().__init__(gaussian_kernel(self.sigma), boundary)


class Downsample(LinearOperator):
    """The average of each ``scale × scale`` block: the observation is ``scale`` times smaller on each side."""

    def __init__(self, scale: int) -> None:
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"the scale must be a whole number of pixels >= 1, got {scale!r}")
        self.scale = scale

    def axis_matrices(self, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor] | None:
        def average(size: int) -> Tensor:
            eye = torch.eye(size // self.scale, dtype=like.dtype, device=like.device)
            return eye.repeat_interleave(self.scale, dim=1) / self.scale

        return average(height), average(width)

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        b, c, h, w = _image_shape(shape)
        k = self.scale
        if h == 0 or w == 0:
            raise ValueError(f"the image is empty ({h}×{w} pixels): give an image of at least {k}×{k}")
        if h % k or w % k:
            low, high = f"{h // k * k}×{w // k * k}", f"{-(-h // k) * k}×{-(-w // k) * k}"
            advice = f"pad it to {high}" if h < k or w < k else f"crop it to {low} or pad it to {high}"
            raise ValueError(f"the image is {h}×{w} pixels, not a multiple of the scale {k} on each side: {advice}")
        return b, c, h // k, w // k

    def __call__(self, x: Tensor) -> Tensor:
        self.out_shape(x.shape)
        return F.avg_pool2d(x, self.scale)

    def adjoint(self, y: Tensor) -> Tensor:
        _image_shape(y.shape)
        k = self.scale
        return y.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1) / k**2


class Decimate(Downsample):
    """Every ``scale``-th pixel of each row and column, from the first (``x[..., ::scale, ::scale]``): the
    observation is ``scale`` times smaller on each side. Blur first, or it aliases (module docstring)."""

    def __call__(self, x: Tensor) -> Tensor:
        self.out_shape(x.shape)
        return x[..., :: self.scale, :: self.scale]

    def adjoint(self, y: Tensor) -> Tensor:
        b, c, h, w = _image_shape(y.shape)
        out = y.new_zeros(b, c, h * self.scale, w * self.scale)
        out[..., :: self.scale, :: self.scale] = y
        return out

    def axis_matrices(self, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor] | None:
        def keep(size: int) -> Tensor:
            return torch.eye(size, dtype=like.dtype, device=like.device)[:: self.scale]

        return keep(height), keep(width)


class Mask(LinearOperator):
    """:math:`m \\odot x`: 1 where a pixel is observed, 0 where it is missing; ``mask`` is ``(H, W)`` or
    ``(C, H, W)`` with one channel or as many as the images."""

    def __init__(self, mask: Tensor | Sequence[Sequence[float]]) -> None:
        m = torch.as_tensor(mask, dtype=torch.float64)
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3:
            raise ValueError(f"a mask must be shaped (H, W) or (C, H, W), got shape {tuple(m.shape)}")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("a mask holds only 0 (missing) and 1 (observed): threshold it first, e.g. mask >= 0.5")
        self.mask = m

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        b, c, h, w = _image_shape(shape)
        channels, rows, cols = self.mask.shape
        if (rows, cols) != (h, w):
            raise ValueError(f"the mask is {rows}×{cols} pixels but the observation is {h}×{w}: give a mask of {h}×{w}")
        if channels not in (1, c):
            raise ValueError(f"the mask has {channels} channels but the images have {c}: give a mask with 1 or {c}")
        return b, c, h, w

    def __call__(self, x: Tensor) -> Tensor:
        self.out_shape(x.shape)
        return x * self.mask.to(dtype=x.dtype, device=x.device)

    def adjoint(self, y: Tensor) -> Tensor:
        return self(y)

    def observed(self, y: Tensor) -> Tensor:
        return self(y)


class Compose(LinearOperator):
    r""":math:`A = A_n \cdots A_1`: the operators applied in the order given, the first to the image."""

    def __init__(self, operators: Sequence[LinearOperator]) -> None:
        operators = list(operators)
        if not operators or not all(isinstance(op, LinearOperator) for op in operators):
            raise ValueError("Compose needs a non-empty list of linear operators (Blur, Kernel, Downsample, Mask)")
        self.operators = operators

    def out_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        shape = _image_shape(shape)
        for op in self.operators:
            shape = op.out_shape(shape)
        return shape

    def __call__(self, x: Tensor) -> Tensor:
        for op in self.operators:
            x = op(x)
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        for op in reversed(self.operators):
            y = op.adjoint(y)
        return y

    def observed(self, y: Tensor) -> Tensor:
        return self.operators[-1].observed(y)

    def axis_matrices(self, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor] | None:
        rows = torch.eye(height, dtype=like.dtype, device=like.device)
        cols = torch.eye(width, dtype=like.dtype, device=like.device)
        for op in self.operators:
            pair = op.axis_matrices(rows.shape[0], cols.shape[0], like)
            if pair is None:
                return None
            rows, cols = pair[0] @ rows, pair[1] @ cols
        return rows, cols


def stages(operator: LinearOperator) -> list[LinearOperator]:
    """The operators that make up ``operator`` (a :class:`Compose` unfolded, also nested ones), in the order they are
    applied."""
    if isinstance(operator, Compose):
        return [stage for part in operator.operators for stage in stages(part)]
    return [operator]


def observation_shape(operator: LinearOperator, y: Tensor, shape: Sequence[int] | None) -> tuple[int, ...]:
    """The shape ``(C, H, W)`` of the images behind ``y``: ``shape``, or ``y``'s own; checked against the operator."""
    image = tuple(y.shape[1:]) if shape is None else tuple(int(n) for n in shape)
    try:
        expected = operator.out_shape((y.shape[0], *image))
    except ValueError as error:
        if shape is not None:
            raise
        raise ValueError(
            f"{error} (the images were taken to be y's size: pass their shape as shape=(C, H, W))"
        ) from None
    if tuple(expected) != tuple(y.shape):
        raise ValueError(
            f"the operator maps images {image} to observations {tuple(expected)[1:]}, but y is {tuple(y.shape)[1:]}: "
            "pass the images' shape as shape=(C, H, W)"
        )
    return image


def linear_observation(
    operator: LinearOperator | None, y: Tensor, sigma_y: float, shape: Sequence[int] | None
) -> tuple[LinearOperator, Tensor, tuple[int, ...], float]:
    r"""The checked parts of :math:`y = A x + \sigma_y n` that the posterior methods take: :math:`A` (the identity for
    ``None``), ``y`` with the values :math:`A x` never carries set to 0, the images' shape ``(C, H, W)``
    (:func:`observation_shape`) and :math:`\sigma_y \geq 0`."""
    if not float(sigma_y) >= 0:
        raise ValueError(f"sigma_y must be non-negative, got {sigma_y}")
    operator = operator or Identity()
    return operator, operator.observed(y), observation_shape(operator, y, shape), float(sigma_y)


def make_operator(
    *,
    blur: float | None = None,
    kernel: Tensor | None = None,
    scale: int | None = None,
    decimate: int | None = None,
    mask: Tensor | None = None,
    boundary: str = "reflect",
) -> LinearOperator:
    """The observation operator of the options given, applied in the order blur, kernel, downsample (block average),
    decimate, mask; the blur and the kernel extend the image by ``boundary``; :class:`Identity` when none is."""
    stages: list[LinearOperator] = []
    if blur is not None:
        stages.append(Blur(blur, boundary))
    if kernel is not None:
        stages.append(Kernel(kernel, boundary))
    if scale is not None:
        stages.append(Downsample(scale))
    if decimate is not None:
        stages.append(Decimate(decimate))
    if mask is not None:
        stages.append(Mask(mask))
    if not stages:
        return Identity()
    return stages[0] if len(stages) == 1 else Compose(stages)


def operator_matrix(operator: Callable[[Tensor], Tensor], shape: Sequence[int]) -> Tensor:
    """The dense matrix ``(M, D)`` of a linear operator on images of ``shape = (C, H, W)`` (float64), column ``j`` the
    flattened image of the ``j``-th basis image: for small images (tests, closed-form posteriors)."""
    dim = math.prod(shape)
    basis = torch.eye(dim, dtype=torch.float64).reshape(dim, *shape)
    return operator(basis).reshape(dim, -1).T.contiguous()


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, steps: int, tolerance: float = 0.0) -> Tensor:
    r"""``steps`` conjugate-gradient iterations from 0 for :math:`M u = b`, one system per row of the batch.

    :math:`M` (``apply``) must be symmetric positive semi-definite; for a singular :math:`M`, :math:`b` must lie in its
    range, and the iterates then stay in it and approach the minimum-norm solution. In exact arithmetic the
    iterations end at the solution after as many steps as :math:`M` has distinct eigenvalues. A row whose residual
    or curvature vanishes stops where it is. With ``tolerance`` > 0 the iterations end early once every row's
    residual is below ``tolerance`` times its :math:`\lVert b \rVert`. (Hestenes & Stiefel, 1952.)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"the conjugate-gradient steps must be an integer >= 0, got {steps!r}")
    dims = tuple(range(1, b.ndim))
    u, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r.square().sum(dims, keepdim=True)
    target = tolerance**2 * rr
    for _ in range(steps):
        if tolerance > 0 and bool((rr <= target).all()):
            break
        q = apply(p)
        curvature = (p * q).sum(dims, keepdim=True)
        alpha = torch.where(curvature > 0, rr / torch.where(curvature > 0, curvature, 1), 0)
        u, r = u + alpha * p, r - alpha * q
        new = r.square().sum(dims, keepdim=True)
        beta = torch.where(rr > 0, new / torch.where(rr > 0, rr, 1), 0)
        p, rr = r + beta * p, new
    return u


def minimal_residual(apply: Callable[[Tensor], Tensor], b: Tensor, steps: int) -> Tensor:
    r"""``steps`` iterations of GMRES from 0 for :math:`M u = b`, one system per row of the batch: the :math:`u` of the
    Krylov space :math:`\operatorname{span}\{b, M b, \dots, M^{k-1} b\}` with the least residual
    :math:`\lVert b - M u \rVert`, by Arnoldi's orthogonalisation (modified Gram-Schmidt) and a small least-squares
    problem. Unlike conjugate gradients it needs :math:`M` neither symmetric nor positive, and its residual never
    grows with the steps; for a symmetric positive definite :math:`M` both reach the solution after as many steps as
    :math:`M` has distinct eigenvalues. One product with :math:`M` per step. (Saad & Schultz, 1986.)
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"the GMRES steps must be an integer >= 1, got {steps!r}")
    dims, batch = tuple(range(1, b.ndim)), b.shape[0]
    column = (batch,) + (1,) * (b.ndim - 1)
    norm = b.flatten(1).norm(dim=1)
    basis = [b / torch.where(norm > 0, norm, 1).view(column)]
    hessenberg = b.new_zeros(batch, steps + 1, steps)
    for j in range(steps):
        w = apply(basis[j])
        for i in range(j + 1):
            h = (w * basis[i]).sum(dims)
            hessenberg[:, i, j] = h
            w = w - h.view(column) * basis[i]
        length = w.flatten(1).norm(dim=1)
        hessenberg[:, j + 1, j] = length
        basis.append(w / torch.where(length > 1e-30, length, 1).view(column) * (length > 1e-30).view(column))
    target = b.new_zeros(batch, steps + 1, 1)
    target[:, 0, 0] = norm
    coefficients = torch.linalg.lstsq(hessenberg.cpu().double(), target.cpu().double(), driver="gelsd").solution
    coefficients = coefficients.to(b)
    return sum(coefficients[:, i, 0].view(column) * basis[i] for i in range(steps))  # type: ignore[return-value]
