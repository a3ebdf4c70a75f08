"""Which of two checkpoints samples better: the KID difference of two sample folders and its paired standard error.

Two models sampled with the same seeds (``sda sample --seed 0``, as ``sample_quality.py --work`` keeps them) start
sample i from the same noise, so their KIDs against the same test images are correlated and their difference is
known far better than either KID alone. The difference of the unbiased MMD² estimates (``sample_quality.py``),

    Δ = MMD²_u(x, y) − MMD²_u(x, z),

gets a jackknife standard error over the triples (x_i, y_i, z_i): leave triple i out of all three sets, recompute
Δ_(i), and SE = √((N − 1)/N · Σ_i (Δ_(i) − mean)²) (Efron & Stein, 1981). The test-image terms k(x_i, x_j) cancel in
Δ, so what remains is the spread of the two sample sets' own and cross terms.

Run from ``benchmarks/`` on two folders of ``sample_*.png`` (the first N exact test images are the reference):

    python kid_paired.py ../runs/quality/ship-ema/samples-heun-18 ../runs/quality/ship-raw/samples-heun-18
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _common import DEFAULT_DATA
from PIL import Image
from sample_quality import Inception, cubic_kernel, mmd2_jackknife

from sda_cli.data import cifar10


def read_samples(folder: Path) -> torch.Tensor:
    """The ``sample_*.png`` files of ``folder`` in name order, ``(N, 3, H, W)`` uint8."""
    paths = sorted(folder.glob("sample_*.png"))
    if not paths:
        raise SystemExit(f"no sample_*.png files in {folder}")
    return torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths])


def sample_terms(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernel matrices k(y_i, y_j) (zero diagonal) and k(x_i, y_j) of MMD²_u; its k(x_i, x_j) cancels in Δ."""
    kyy = cubic_kernel(y, y)
    np.fill_diagonal(kyy, 0)
    return kyy, cubic_kernel(x, y)


def paired_difference(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """Δ = MMD²_u(x, y) − MMD²_u(x, z) and its jackknife standard error over the triples (module docstring)."""
    m = len(x)
    kyy, kxy = sample_terms(x, y)
    kzz, kxz = sample_terms(x, z)

    def delta(own_y: np.ndarray, cross_y: np.ndarray, own_z: np.ndarray, cross_z: np.ndarray, n: int) -> np.ndarray:
        return (own_y - own_z) / (n * (n - 1)) - 2 * (cross_y - cross_z) / n**2

    full = delta(kyy.sum(), kxy.sum(), kzz.sum(), kxz.sum(), m)
    own_y, own_z = kyy.sum() - 2 * kyy.sum(1), kzz.sum() - 2 * kzz.sum(1)
    cross_y = kxy.sum() - kxy.sum(1) - kxy.sum(0) + np.diag(kxy)
    cross_z = kxz.sum() - kxz.sum(1) - kxz.sum(0) + np.diag(kxz)
    leave_one_out = delta(own_y, cross_y, own_z, cross_z, m - 1)
    error = np.sqrt((m - 1) / m * np.sum((leave_one_out - leave_one_out.mean()) ** 2))
    return float(full), float(error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="a folder of sample_*.png")
    parser.add_argument("second", type=Path, help="a folder of sample_*.png drawn with the same seeds")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    first, second = read_samples(args.first), read_samples(args.second)
    if len(first) != len(second):
        raise SystemExit(f"{len(first)} samples in {args.first} but {len(second)} in {args.second}")
    test = cifar10(args.data_dir, train=False, download=False).images[: len(first)]
    inception = Inception()
    x, y, z = inception(test), inception(first), inception(second)
    for name, features in ((args.first, y), (args.second, z)):
        kid, error = mmd2_jackknife(x, features)
        print(f"KID {kid:.4f} ± {error:.4f}  {name}")
    difference, error = paired_difference(x, y, z)
    print(f"difference (first − second) {difference:+.4f} ± {error:.4f} (paired), {difference / error:+.1f} SE")


if __name__ == "__main__":
    main()
