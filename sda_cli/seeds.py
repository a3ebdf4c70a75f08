"""Random streams: each command draws from its own stream of the user's ``--seed``.

With one stream, ``sda noise --seed 0`` then ``sda denoise --seed 0`` would repeat the observation's noise draw for
draw as the posterior sampler's first noise, and a posterior sample's error would grow (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import hashlib
import secrets

import torch

__all__ = ["command_seed", "seeded_generator"]


def command_seed(seed: int, command: str) -> int:
    """The seed of ``command``'s random stream for the user's ``--seed``: 63 bits of SHA-256 of both."""
    digest = hashlib.sha256(f"sda {command} --seed {seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seeded_generator(seed: int | None, command: str, device: torch.device | str = "cpu") -> tuple[torch.Generator, int]:
    """A generator on ``device`` for ``command``'s stream of ``seed`` (a fresh random seed when ``None``), and the
    seed used, so that a run can be repeated."""
    if seed is None:
        seed = secrets.randbits(32)
    return torch.Generator(device=device).manual_seed(command_seed(seed, command)), seed
