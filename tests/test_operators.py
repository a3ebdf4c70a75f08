"""Observation operators against scipy.ndimage and hand-computed values; exact transposes; one-line errors."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from sda_cli.operators import (
    Blur,
    Compose,
    Decimate,
    Downsample,
    Identity,
    Kernel,
    LinearOperator,
    Mask,
    conjugate_gradient,
    convolution_matrix,
    convolve_axis,
    make_operator,
    minimal_residual,
    operator_matrix,
    reflect_indices,
)

F64 = torch.float64


def randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def scipy_convolve(x: Tensor, kernel: Tensor) -> Tensor:
    """``scipy.ndimage.convolve(mode="reflect")`` on each channel of each image."""
    out = [[ndimage.convolve(channel.numpy(), kernel.numpy(), mode="reflect") for channel in image] for image in x]
    return torch.from_numpy(np.array(out))


def test_reflect_indices_repeat_the_edge_pixel() -> None:
    """d c b a | a b c d | d c b a, as scipy's "reflect", also for an extension longer than the axis; torch's own
    "reflect" padding omits the edge pixel (c b | a b c d | c b), which is why the operators build their own."""
    assert reflect_indices(4, 2, 2).tolist() == [1, 0, 0, 1, 2, 3, 3, 2]
    assert reflect_indices(3, 5, 4).tolist() == [1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]
    assert reflect_indices(1, 2, 2).tolist() == [0] * 5
    row = torch.arange(4, dtype=F64)[None, None]
    assert F.pad(row, (2, 2), mode="reflect").flatten().tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    assert np.pad(np.arange(4), 2, mode="symmetric").tolist() == row.flatten()[reflect_indices(4, 2, 2)].tolist()


@pytest.mark.parametrize(
    ("shape", "kernel_shape"),
    [((2, 3, 8, 9), (3, 5)), ((1, 1, 4, 5), (11, 7)), ((3, 2, 6, 6), (1, 3)), ((1, 1, 7, 5), (5, 5))],
)
def test_kernel_is_scipys_reflecting_convolution(shape: tuple[int, ...], kernel_shape: tuple[int, int]) -> None:
    """Random (asymmetric, full-rank) kernels, also one larger than the image: the same numbers as
    scipy.ndimage.convolve(mode="reflect"), a true convolution, and not its correlation."""
    x, kernel = randn(*shape, seed=1), randn(*kernel_shape, seed=2)
    out = Kernel(kernel)(x)
    torch.testing.assert_close(out, scipy_convolve(x, kernel), rtol=1e-12, atol=1e-12)
    correlated = torch.from_numpy(
        np.array([[ndimage.correlate(c.numpy(), kernel.numpy(), mode="reflect") for c in i] for i in x])
    )
    assert float((out - correlated).abs().max()) > 0.1


@pytest.mark.parametrize("sigma", [0.3, 1.0, 1.7, 3.0])
def test_blur_kernel_and_output(sigma: float) -> None:
    """exp(-(i^2 + j^2) / 2 S^2) on a (2 ceil(3S) + 1)^2 grid, summing to 1; the blur is scipy's convolution with it,
    keeps the size, and leaves a constant image unchanged."""
    blur = Blur(sigma)
    radius = math.ceil(3 * sigma)
    assert blur.kernel.shape == (2 * radius + 1, 2 * radius + 1)
    i = torch.arange(-radius, radius + 1, dtype=F64)
    expected = torch.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / (2 * sigma**2))
    torch.testing.assert_close(blur.kernel, expected / expected.sum(), rtol=1e-14, atol=0)
    assert math.isclose(float(blur.kernel.sum()), 1.0, rel_tol=1e-14)
    x = randn(2, 3, 9, 7, seed=3)
    torch.testing.assert_close(blur(x), scipy_convolve(x, blur.kernel), rtol=1e-12, atol=1e-12)
    flat = torch.full((1, 1, 5, 6), 0.3, dtype=F64)
    torch.testing.assert_close(blur(flat), flat, rtol=1e-13, atol=0)


@pytest.mark.parametrize(("shape", "kernel_shape"), [((2, 3, 8, 9), (3, 5)), ((1, 1, 4, 5), (11, 7))])
def test_circular_kernel_is_scipys_wrapping_convolution(shape: tuple[int, ...], kernel_shape: tuple[int, int]) -> None:
    """With circular boundaries, a random kernel (also one larger than the image) gives the numbers of
    scipy.ndimage.convolve(mode="wrap"), DPIR's degradation, and they differ from the reflecting ones near the
    edges only."""
    x, kernel = randn(*shape, seed=1), randn(*kernel_shape, seed=2)
    out = Kernel(kernel, "circular")(x)
    wrapped = [[ndimage.convolve(c.numpy(), kernel.numpy(), mode="wrap") for c in image] for image in x]
    torch.testing.assert_close(out, torch.from_numpy(np.array(wrapped)), rtol=1e-12, atol=1e-12)
    assert float((out - Kernel(kernel)(x)).abs().max()) > 0.1
    big = randn(1, 1, 20, 20, seed=3)
    inner = (Blur(1.0, "circular")(big) - Blur(1.0)(big))[..., 3:-3, 3:-3]
    assert float(inner.abs().max()) < 1e-12


def test_decimate_keeps_every_kth_pixel_from_the_first() -> None:
    """x[..., ::K, ::K], DPIR's classical downsampler; its transpose puts the values back with zeros between, so
    A A^T = I; sizes that are not multiples of K are refused as for the block average."""
    x = randn(2, 3, 6, 9, seed=4)
    torch.testing.assert_close(Decimate(3)(x), x[..., ::3, ::3], rtol=0, atol=0)
    y = randn(2, 3, 2, 3, seed=5)
    back = Decimate(3).adjoint(y)
    assert back.shape == x.shape and float(back.abs().sum()) == pytest.approx(float(y.abs().sum()))
    torch.testing.assert_close(Decimate(3)(back), y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not a multiple of the scale 2"):
        Decimate(2)(randn(1, 1, 5, 4))
    op = make_operator(blur=1.0, decimate=2, boundary="circular")
    assert isinstance(op, Compose) and isinstance(op.operators[1], Decimate)
    assert op.operators[0].boundary == "circular"  # type: ignore[attr-defined]


def test_downsample_averages_each_block() -> None:
    x = torch.arange(2 * 4 * 6, dtype=F64).reshape(1, 2, 4, 6)
    out = Downsample(2)(x)
    assert out.shape == (1, 2, 2, 3)
    # top-left block of channel 0 holds 0, 1, 6, 7; the block right of it 2, 3, 8, 9
    assert out[0, 0, 0, 0] == 3.5 and out[0, 0, 0, 1] == 5.5 and out[0, 1, 1, 2] == (40 + 41 + 46 + 47) / 4
    assert torch.equal(Downsample(3)(torch.ones(1, 1, 6, 9, dtype=F64)), torch.ones(1, 1, 2, 3, dtype=F64))
    assert torch.equal(Downsample(1)(x), x)


def test_mask_keeps_observed_pixels_in_every_channel() -> None:
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x = randn(2, 3, 2, 2, seed=4)
    out = Mask(mask)(x)
    assert torch.equal(out[:, :, 0, 1], torch.zeros(2, 3, dtype=F64)) and torch.equal(out[:, :, 0, 0], x[:, :, 0, 0])
    per_channel = torch.stack([mask, 1 - mask, mask])
    out = Mask(per_channel)(x)
    assert torch.equal(out, x * per_channel.to(F64))
    assert Mask(per_channel).observed(x).equal(out)


def test_make_operator_applies_blur_then_downsample_then_mask() -> None:
    mask = (torch.rand(4, 4, generator=torch.Generator().manual_seed(5)) < 0.5).double()
    x = randn(2, 1, 8, 8, seed=6)
    op = make_operator(blur=1.0, scale=2, mask=mask)
    assert isinstance(op, Compose) and op.out_shape((2, 1, 8, 8)) == (2, 1, 4, 4)
    torch.testing.assert_close(op(x), Mask(mask)(Downsample(2)(Blur(1.0)(x))), rtol=0, atol=0)
    assert isinstance(make_operator(), Identity) and make_operator()(x) is x
    assert isinstance(make_operator(scale=2), Downsample)
    y = randn(2, 1, 4, 4, seed=7)
    assert torch.equal(op.observed(y), y * mask)


def operators() -> dict[str, tuple[LinearOperator, tuple[int, ...]]]:
    """Every operator on a batch of images it takes."""
    generator = torch.Generator().manual_seed(8)
    mask = (torch.rand(3, 6, 6, generator=generator) < 0.5).double()
    return {
        "identity": (Identity(), (2, 3, 6, 6)),
        "blur": (Blur(1.2), (2, 3, 6, 7)),
        "kernel": (Kernel(randn(5, 3, seed=9)), (2, 1, 5, 8)),
        "large kernel": (Kernel(randn(9, 13, seed=10)), (1, 2, 3, 4)),
        "downsample": (Downsample(3), (2, 2, 6, 9)),
        "circular blur": (Blur(1.2, "circular"), (2, 3, 6, 7)),
        "circular kernel larger than the image": (Kernel(randn(9, 7, seed=15), "circular"), (1, 2, 4, 5)),
        "decimate": (Decimate(3), (2, 2, 6, 9)),
        "blur and decimate": (Compose([Blur(1.0, "circular"), Decimate(2)]), (1, 3, 6, 8)),
        "mask": (Mask(mask[:1]), (2, 3, 6, 6)),
        "mask per channel": (Mask(mask), (2, 3, 6, 6)),
        "combination": (
            Compose([Blur(0.7), Kernel(randn(3, 3, seed=11)), Downsample(2), Mask(mask[:, :3, :3])]),
            (2, 3, 6, 6),
        ),
    }


@pytest.mark.parametrize("name", list(operators()))
def test_adjoint_is_the_exact_transpose(name: str) -> None:
    """<A x, y> = <x, A^T y> for random x and y, and the matrix of A^T is the transpose of the matrix of A."""
    op, shape = operators()[name]
    x = randn(*shape, seed=12)
    y = randn(*op.out_shape(shape), seed=13)
    assert op(x).shape == y.shape and op.adjoint(y).shape == x.shape
    left, right = float((op(x) * y).sum()), float((x * op.adjoint(y)).sum())
    assert math.isclose(left, right, rel_tol=1e-12, abs_tol=1e-12), (left, right)
    matrix = operator_matrix(op, shape[1:])
    transpose = operator_matrix(op.adjoint, op.out_shape(shape)[1:])
    torch.testing.assert_close(transpose, matrix.T, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close((x.flatten(1) @ matrix.T).reshape(y.shape), op(x), rtol=1e-12, atol=1e-12)


def test_operators_keep_dtype_and_run_in_float32() -> None:
    for name, (op, shape) in operators().items():
        x = randn(*shape, seed=14)
        out = op(x.float())
        assert out.dtype == torch.float32 and op.adjoint(out).dtype == torch.float32, name
        torch.testing.assert_close(out.double(), op(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Kernel(torch.ones(4, 3)), "odd sides"),
        (lambda: Kernel(torch.ones(3)), "2-D array"),
        (lambda: Kernel(torch.ones(3, 3, 1)), "2-D array"),
        (lambda: Kernel(torch.tensor([[1.0, float("nan"), 0.0]])), "NaN or infinite"),
        (lambda: Kernel(torch.zeros(3, 3)), "all zeros"),
        (lambda: Blur(0.0), "positive number of pixels"),
        (lambda: Blur(-1.0), "positive number of pixels"),
        (lambda: Blur(float("inf")), "positive number of pixels"),
        (lambda: Blur(True), "positive number of pixels"),
        (lambda: Downsample(0), "whole number"),
        (lambda: Downsample(2.0), "whole number"),  # type: ignore[arg-type]
        (lambda: Mask(torch.full((3, 3), 0.5)), "only 0 .missing. and 1"),
        (lambda: Mask(torch.ones(1, 1, 3, 3)), r"\(H, W\) or \(C, H, W\)"),
        (lambda: Compose([]), "non-empty list"),
    ],
)
def test_bad_operators_are_refused_in_one_line(build: object, match: str) -> None:
    with pytest.raises(ValueError, match=match) as error:
        build()  # type: ignore[operator]
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("op", "shape", "match"),
    [
        (Downsample(2), (1, 3, 7, 8), r"7×8 pixels, not a multiple of the scale 2 on each side: crop it to 6×8 or pad"),
        (Downsample(4), (1, 1, 2, 8), "not a multiple of the scale 4 on each side: pad it to 4×8$"),
        (Mask(torch.ones(4, 4)), (1, 1, 4, 5), "the mask is 4×4 pixels but the observation is 4×5: give a mask of 4×5"),
        (Mask(torch.ones(2, 4, 4)), (1, 3, 4, 4), "the mask has 2 channels but the images have 3"),
        (Blur(1.0), (3, 4, 4), r"\(B, C, H, W\).*x\[None\]"),
        (
            Compose([Downsample(2), Mask(torch.ones(4, 4))]),
            (1, 1, 4, 4),
            "the mask is 4×4 pixels but the observation is 2×2",
        ),
    ],
)
def test_images_an_operator_cannot_take_are_refused(op: LinearOperator, shape: tuple[int, ...], match: str) -> None:
    """Checked before any work (out_shape) and when applied, with a message that says what to do."""
    with pytest.raises(ValueError, match=match) as error:
        op.out_shape(shape)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=match):
        op(torch.zeros(shape))


def test_minimal_residual_solves_nonsymmetric_systems() -> None:
    """GMRES on a non-symmetric 10 x 10 system per row, one with negative eigenvalues in its symmetric part: solved
    after 10 steps (to rounding), its residual never growing with the steps, where conjugate gradients on the same
    system diverge or stall; a positive-definite system gives conjugate gradients' solution; a zero right-hand side
    stays 0."""
    generator = torch.Generator().manual_seed(16)
    matrix = torch.eye(10, dtype=F64) + 0.6 * torch.randn(10, 10, generator=generator, dtype=F64)
    b = torch.randn(3, 10, generator=generator, dtype=F64)
    b[2] = 0
    exact = b @ torch.linalg.inv(matrix).T
    residuals = [float((b - minimal_residual(lambda v: v @ matrix.T, b, k) @ matrix.T).norm()) for k in range(1, 11)]
    assert all(later <= earlier + 1e-12 for earlier, later in pairwise(residuals))
    torch.testing.assert_close(minimal_residual(lambda v: v @ matrix.T, b, 10), exact, rtol=1e-8, atol=1e-10)
    assert float((conjugate_gradient(lambda v: v @ matrix.T, b, 10) - exact).abs().max()) > 1e-3
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=F64))
    positive = (q * torch.logspace(-1, 0, 8, dtype=F64)) @ q.T
    torch.testing.assert_close(
        minimal_residual(lambda v: v @ positive, b[:, :8], 8), conjugate_gradient(lambda v: v @ positive, b[:, :8], 8)
    )
    assert bool((minimal_residual(lambda v: v @ matrix.T, b, 4)[2] == 0).all())
    with pytest.raises(ValueError, match="integer >= 1"):
        minimal_residual(lambda v: v, b, 0)


def test_conjugate_gradient_solves_each_row_of_a_batch() -> None:
    """A positive-definite 12 x 12 system per row (condition number 100): converged to rounding after 30 steps (12 in
    exact arithmetic; rounding costs a few more), not after 3; a singular system with a right-hand side in
    its range: the minimum-norm solution; a zero right-hand side stays 0 without dividing by zero."""
    generator = torch.Generator().manual_seed(15)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=F64))
    matrix = (q * torch.logspace(-2, 0, 12, dtype=F64)) @ q.T
    b = torch.randn(3, 12, generator=generator, dtype=F64)
    b[2] = 0
    u = conjugate_gradient(lambda v: v @ matrix, b, 30)
    torch.testing.assert_close(u, b @ torch.linalg.inv(matrix), rtol=1e-9, atol=1e-12)
    assert bool((u[2] == 0).all())
    assert float((conjugate_gradient(lambda v: v @ matrix, b, 3) - u).abs().max()) > 1e-3  # not converged yet
    singular = (q[:, :5] * torch.linspace(0.5, 2.0, 5, dtype=F64)) @ q[:, :5].T
    rhs = torch.randn(2, 12, generator=generator, dtype=F64) @ singular
    torch.testing.assert_close(
        conjugate_gradient(lambda v: v @ singular, rhs, 5), rhs @ torch.linalg.pinv(singular), rtol=1e-9, atol=1e-12
    )
    with pytest.raises(ValueError, match="integer >= 0"):
        conjugate_gradient(lambda v: v, b, -1)


@pytest.mark.parametrize("name", list(operators()))
def test_axis_matrices_give_the_operator(name: str) -> None:
    """Where an operator acts on rows and columns apart, A x = M x N^T on every channel; masks and kernels of rank
    above 1 (and so the combination here) have no such pair."""
    op, shape = operators()[name]
    x = randn(*shape, seed=16)
    pair = op.axis_matrices(shape[-2], shape[-1], x)
    separable = not name.startswith(("mask", "combination", "kernel", "large kernel", "circular kernel"))
    assert (pair is not None) == separable
    if pair is not None:
        torch.testing.assert_close(pair[0] @ x @ pair[1].T, op(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("boundary", ["reflect", "circular"])
@pytest.mark.parametrize(("size", "length"), [(9, 3), (16, 25), (5, 9), (40, 7)])
def test_convolve_axis_is_the_convolution_matrix_and_its_transpose(boundary: str, size: int, length: int) -> None:
    """The 1-D convolution along either axis, and its transpose, equal the dense :func:`convolution_matrix` (float64,
    1e-12), taps longer than the axis included (the extension then wraps or reflects more than once)."""
    taps = randn(length, seed=size + length)
    matrix = convolution_matrix(taps, size, boundary)
    x = randn(2, 3, size, size + 3, seed=1)
    columns = convolution_matrix(taps, size + 3, boundary)
    torch.testing.assert_close(convolve_axis(x, taps, -2, boundary), matrix @ x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        convolve_axis(x, taps, -2, boundary, transpose=True), matrix.T @ x, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(convolve_axis(x, taps, -1, boundary), x @ columns.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        convolve_axis(x, taps, -1, boundary, transpose=True), x @ columns, rtol=1e-12, atol=1e-12
    )
