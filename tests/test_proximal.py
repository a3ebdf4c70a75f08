"""The data step (A^T A + w I)^{-1} b of plug-and-play against a dense solve, for every operator and both
boundaries."""

from __future__ import annotations

import pytest
import torch

from sda_cli.operators import Blur, Compose, Decimate, Downsample, Identity, Kernel, Mask, operator_matrix
from sda_cli.proximal import RegularisedInverse

F64 = torch.float64
SHAPE = (3, 12, 18)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def mask() -> torch.Tensor:
    return (torch.rand(12, 18, generator=torch.Generator().manual_seed(3)) < 0.5).double()


OPERATORS = {
    "identity": (Identity(), True),
    "reflecting blur": (Blur(1.3), True),
    "circular blur": (Blur(1.3, "circular"), True),
    "block average": (Downsample(3), True),
    "circular blur, decimation": (Compose([Blur(1.0, "circular"), Decimate(3)]), True),
    "reflecting blur, block average": (Compose([Blur(0.8), Downsample(2)]), True),
    "mask": (Mask(mask()), True),
    "kernel of rank 2": (Kernel(randn(3, 5, seed=1).abs()), False),
    "blur, mask": (Compose([Blur(0.8), Mask(mask())]), False),
}


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("weight", [0.3, 1e-2])
def test_solve_matches_the_dense_solve(name: str, weight: float) -> None:
    """Exact (to 1e-10) where a closed form exists, conjugate gradients to tolerance elsewhere (checked on the
    residual, 1e-5 of b, which is what they promise)."""
    op, exact = OPERATORS[name]
    matrix = operator_matrix(op, SHAPE)
    system = matrix.T @ matrix + weight * torch.eye(matrix.shape[1], dtype=F64)
    b = randn(2, *SHAPE, seed=2)
    inverse = RegularisedInverse(op, SHAPE, b)
    assert inverse.exact == exact
    got = inverse(b, weight)
    if exact:
        truth = torch.linalg.solve(system, b.flatten(1).T).T.reshape(b.shape)
        torch.testing.assert_close(got, truth, rtol=1e-10, atol=1e-10)
    else:
        residual = (b.flatten(1) - got.flatten(1) @ system.T).norm(dim=1) / b.flatten(1).norm(dim=1)
        assert float(residual.max()) <= 1e-5


def test_noise_free_solve_is_the_pseudo_inverse() -> None:
    """w = 0 on a decimation: A^T A is singular, and the solve is its pseudo-inverse (to 1e-8), not a blow-up."""
    op = Compose([Blur(1.0, "circular"), Decimate(2)])
    matrix = operator_matrix(op, SHAPE)
    b = op.adjoint(randn(2, *op.out_shape((2, *SHAPE))[1:], seed=4))
    truth = (torch.linalg.pinv(matrix.T @ matrix, hermitian=True) @ b.flatten(1).T).T.reshape(b.shape)
    torch.testing.assert_close(RegularisedInverse(op, SHAPE, b)(b, 0.0), truth, rtol=1e-8, atol=1e-8)


NOISE_FREE = ["identity", "block average", "circular blur, decimation", "mask"]
"""Operators whose A^T A has zeros and eigenvalues well above the rank cutoff: a blur's smallest eigenvalues sit near
it, where any cutoff changes the pseudo-inverse."""


@pytest.mark.parametrize(
    ("name", "weight"), [(name, w) for name in OPERATORS for w in (0.3, 1e-2)] + [(name, 0.0) for name in NOISE_FREE]
)
def test_solve_of_an_adjoint_matches_the_dense_solve(name: str, weight: float) -> None:
    """``of_adjoint(r, w)`` = (A^T A + w I)^{-1} A^T r against the dense pseudo-inverse solve (1e-8), where the
    observation is smaller (decimation, block averages: solved in its space) and where it is not; conjugate
    gradients on the residual as above."""
    op, exact = OPERATORS[name]
    matrix = operator_matrix(op, SHAPE)
    system = matrix.T @ matrix + weight * torch.eye(matrix.shape[1], dtype=F64)
    r = randn(2, *op.out_shape((2, *SHAPE))[1:], seed=5)
    b = op.adjoint(r)
    got = RegularisedInverse(op, SHAPE, b).of_adjoint(r, weight)
    if exact:
        truth = (torch.linalg.pinv(system, hermitian=True, rtol=1e-10) @ b.flatten(1).T).T.reshape(b.shape)
        torch.testing.assert_close(got, truth, rtol=1e-8, atol=1e-8)
    else:
        residual = (b.flatten(1) - got.flatten(1) @ system.T).norm(dim=1) / b.flatten(1).norm(dim=1)
        assert float(residual.max()) <= 1e-5
