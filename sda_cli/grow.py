r"""Deepen a trained U-Net without changing what it computes, so that training goes on from its weights.

New residual blocks are added at the levels given, initialised as identities in the manner of Net2DeeperNet
(Chen, Goodfellow & Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer", ICLR 2016): the grown
network :math:`F'_\theta` equals the trained :math:`F_\theta` at initialisation, :math:`F'_\theta(z, c) =
F_\theta(z, c)`, and the new blocks learn from there.

- An encoder block :math:`x \mapsto x + W_2 * \phi(\ldots)` with :math:`W_2 = 0` (as every block starts) is the
  identity, so the level's last output, and the skip it sends to the decoder, are unchanged.
- The decoder block fed that new skip :math:`s` is placed after the level's first decoder block. Its input is
  :math:`[h, s]`; its skip projection is :math:`[I \; 0]` and :math:`W_2 = 0`, so it returns :math:`h`, and the
  blocks before and after it see what they saw before.

Usage: ``python -m sda_cli.grow SMALL.safetensors GROWN.safetensors --blocks 2,2,1,1``, then
``sda train -o GROWN.safetensors --resume …`` trains on from the weights with a fresh optimiser.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from sda_cli.checkpoint import check_config, read_checkpoint, save_model
from sda_cli.unet import Block, UNet, UNetConfig

__all__ = ["grow_blocks"]


def grow_blocks(small: UNet, blocks: tuple[int, ...], seed: int = 0) -> UNet:
    """A U-Net with ``blocks`` encoder blocks per level that computes what ``small`` computes.

    ``blocks`` must be at least ``small``'s count at every level; the new blocks' first convolutions and
    modulations get the usual random initialisation (seeded).
    """
    old = small.config.level_blocks
    if len(blocks) != len(old) or any(n < m for n, m in zip(blocks, old, strict=True)):
        raise ValueError(f"cannot grow blocks {old} to {blocks}: one count per level, none fewer")
    config = UNetConfig.from_dict({**small.config.to_dict(), "blocks": list(blocks)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = UNet(config, precision=small.precision)
    weights = grown.state_dict()
    source = small.state_dict()
    for name in weights:  # everything outside the blocks keeps its name
        if not name.startswith(("down.", "up.")):
            weights[name] = source[name]
    levels = len(old)
    for level in range(levels):
        for b in range(old[level]):  # the old encoder blocks come first; the new ones follow as identities
            _copy(weights, source, f"down.{level}.{b}.", f"down.{level}.{b}.")
        up = levels - 1 - level  # the decoder runs from the coarsest level
        added = blocks[level] - old[level]
        # decoder block 0 keeps its place, the pass-through blocks follow it, then the old blocks 1..n
        _copy(weights, source, f"up.{up}.0.", f"up.{up}.0.")
        for b in range(1, old[level] + 1):
            _copy(weights, source, f"up.{up}.{b + added}.", f"up.{up}.{b}.")
        for b in range(1, added + 1):
            _pass_through(weights, grown.up[up][b], f"up.{up}.{b}.")
    grown.load_state_dict(weights)
    return grown


def _copy(weights: dict[str, Tensor], source: dict[str, Tensor], new: str, old: str) -> None:
    for name, tensor in source.items():
        if name.startswith(old):
            weights[new + name[len(old) :]] = tensor


def _pass_through(weights: dict[str, Tensor], block: Block, prefix: str) -> None:
    """Make a decoder block return the first half of its input: skip projection [I 0], last convolution 0."""
    skip = block.res.skip
    out = skip.out_channels
    projection = torch.zeros_like(skip.weight)
    projection[:, :out, 0, 0] = torch.eye(out)
    weights[prefix + "res.skip.weight"] = projection
    weights[prefix + "res.skip.bias"] = torch.zeros_like(skip.bias)
    weights[prefix + "res.conv2.weight"] = torch.zeros_like(block.res.conv2.weight)
    weights[prefix + "res.conv2.bias"] = torch.zeros_like(block.res.conv2.bias)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Deepen a trained model without changing its output.")
    parser.add_argument("small", type=Path)
    parser.add_argument("grown", type=Path)
    parser.add_argument("--blocks", required=True, help="encoder blocks per level, such as 2,2,1,1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        blocks = tuple(int(n) for n in args.blocks.split(","))
    except ValueError:
        parser.error(f"--blocks takes comma-separated whole numbers such as 2,2,1,1, not {args.blocks!r}")
    try:
        denoiser, config = read_checkpoint(args.small)
        denoiser.backbone = grow_blocks(denoiser.backbone, blocks, args.seed)
        grown_config = {**config, "model": {**config["model"], "blocks": list(blocks)}}
        check_config(grown_config)
        save_model(args.grown, denoiser, {k: v for k, v in grown_config.items() if k != "format"}, half=False)
    except ValueError as error:  # CheckpointError included
        parser.error(str(error))


if __name__ == "__main__":
    main()
