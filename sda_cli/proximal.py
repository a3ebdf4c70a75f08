r"""The data step of half-quadratic splitting: :math:`(A^\top A + w I)^{-1} b`, exactly where the operator allows.

Plug-and-play and DiffPIR move an image :math:`x` towards an observation :math:`y = A x + \sigma_y n` by

.. math:: z = \arg\min_z \lVert y - A z \rVert^2 + w \lVert z - x \rVert^2
            = x + (A^\top A + w I)^{-1} A^\top (y - A x),

with :math:`w = \lambda \sigma_y^2 / \rho^2` (Zhang et al., 2021, eq. 7). :class:`RegularisedInverse` solves it:

* for an operator that acts on rows and columns apart, :math:`A x = M x N^\top` per channel (a blur of rank 1,
  a block average, decimation, and their compositions, with either boundary:
  :meth:`~sda_cli.operators.LinearOperator.axis_matrices`), exactly. With the eigendecompositions
  :math:`M^\top M = U \operatorname{diag}(a) U^\top` and :math:`N^\top N = V \operatorname{diag}(c) V^\top`,
  :math:`A^\top A = (U \otimes V) \operatorname{diag}(a \otimes c) (U \otimes V)^\top`, so

  .. math:: (A^\top A + w I)^{-1} b = U \big[(U^\top b V) \oslash (a c^\top + w)\big] V^\top,

  four matrix products per channel, whatever :math:`w`: the same diagonalisation that DPIR's closed form for
  circular blur and decimation gets from the Fourier transform (Zhao et al., 2016), here for reflecting boundaries
  too. With :math:`w = 0` (a noise-free observation) eigenvalues below ``1e-9`` of the largest count as zero, and
  the solve is the pseudo-inverse's;
  The data step's :math:`b = A^\top r` is solved as :math:`A^\top (A A^\top + w I)^{-1} r`
  (:meth:`RegularisedInverse.of_adjoint`) where the observation is the smaller space, as for super-resolution;
* for a mask, :math:`A^\top A = \operatorname{diag}(m)`: :math:`b \oslash (m + w)`;
* otherwise (a mask after a blur, a kernel of rank above 1), by conjugate gradients until the residual is below
  ``tolerance`` of :math:`\lVert b \rVert`, or ``max_steps``.

References:
    Zhang et al., "Plug-and-Play Image Restoration with Deep Denoiser Prior", IEEE TPAMI 2021, arXiv:2008.13751.
    Zhao et al., "Fast single image super-resolution using a new analytical solution for l2-l2 problems", IEEE TIP
    2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sda_cli.operators import LinearOperator, Mask, conjugate_gradient

__all__ = ["RegularisedInverse"]

RANK_CUTOFF = 1e-9
"""Eigenvalues of :math:`A^\\top A` below this share of the largest count as zero when :math:`w = 0`."""


class RegularisedInverse:
    r""":math:`b, w \mapsto (A^\top A + w I)^{-1} b` for images of ``shape = (C, H, W)`` (module docstring);
    ``like`` gives the dtype and device. Each eigendecomposition is computed once, when first needed."""

    def __init__(
        self,
        operator: LinearOperator,
        shape: Sequence[int],
        like: Tensor,
        *,
        tolerance: float = 1e-5,
        max_steps: int = 1000,
    ) -> None:
        self.operator, self.tolerance, self.max_steps = operator, tolerance, max_steps
        self.dtype = like.dtype
        self.mask: Tensor | None = None
        self.pair: tuple[Tensor, Tensor] | None = None
        self._eigen: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        height, width = int(shape[-2]), int(shape[-1])
        if isinstance(operator, Mask):
            self.mask = operator.mask.to(dtype=like.dtype, device=like.device)
            return
        self.pair = operator.axis_matrices(height, width, like.new_empty(0, dtype=torch.float64))

    @property
    def exact(self) -> bool:
        """Whether the solve is exact (a closed form), not iterative."""
        return self.mask is not None or self.pair is not None

    def __call__(self, b: Tensor, weight: float) -> Tensor:
        r""":math:`(A^\top A + w I)^{-1} b` for a batch ``b`` of images, ``weight`` :math:`w \geq 0`."""
        if self.mask is not None:
            denominator = self.mask + weight
            return torch.where(denominator > 0, b / torch.where(denominator > 0, denominator, 1), 0)
        if self.pair is not None:
            return self._diagonalised("image", b, weight)
        a = self.operator
        return conjugate_gradient(lambda x: a.adjoint(a(x)) + weight * x, b, self.max_steps, self.tolerance)

    def of_adjoint(self, r: Tensor, weight: float) -> Tensor:
        r""":math:`(A^\top A + w I)^{-1} A^\top r` for a batch ``r`` of observations: the data step's increment.

        Where the observation is smaller than the image (decimation, a block average), by the push-through identity
        :math:`(A^\top A + w I)^{-1} A^\top = A^\top (A A^\top + w I)^{-1}`, diagonalised in the observation's
        space (:math:`A A^\top = M M^\top \otimes N N^\top`, whose eigenvalues are those of :math:`A^\top A`
        that are not structurally zero): the four products on a ×2 observation cost an eighth of the image's. At
        :math:`w = 0` both sides are the pseudo-inverse :math:`A^+ r`."""
        if self.pair is not None and self.pair[0].shape[0] * self.pair[1].shape[0] < (
            self.pair[0].shape[1] * self.pair[1].shape[1]
        ):
            return self.operator.adjoint(self._diagonalised("observation", r, weight))
        return self(self.operator.adjoint(r), weight)

    def _diagonalised(self, space: str, b: Tensor, weight: float) -> Tensor:
        r""":math:`U [(U^\top b V) \oslash (a c^\top + w)] V^\top` with the eigendecompositions of :math:`M^\top M`
        and :math:`N^\top N` (``space`` "image") or of :math:`M M^\top` and :math:`N N^\top` ("observation")."""
        if space not in self._eigen:
            assert self.pair is not None
            gram = (lambda k: k.T @ k) if space == "image" else (lambda k: k @ k.T)
            a, u = torch.linalg.eigh(gram(self.pair[0]))
            c, v = torch.linalg.eigh(gram(self.pair[1]))
            spectrum = a.clamp(min=0)[:, None] * c.clamp(min=0)[None, :]
            self._eigen[space] = (u.to(self.dtype), v.to(self.dtype), spectrum)
        u, v, spectrum = self._eigen[space]
        denominator = spectrum + weight
        floor = RANK_CUTOFF * float(spectrum.max()) if weight == 0 else 0.0
        scale = torch.where(denominator > floor, 1 / denominator.clamp(min=1e-300), 0).to(b.dtype)
        return u @ ((u.T @ b @ v) * scale) @ v.T
