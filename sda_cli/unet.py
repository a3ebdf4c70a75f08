r"""The U-Net backbone: a time embedding, residual blocks and attention at low resolution.

The network :math:`F_\theta(z, c)` maps an image :math:`z` and a noise feature :math:`c` (a scalar per
image, the log noise ratio) to an image of the same shape. Residual blocks receive the embedding of
:math:`c` as a scale and shift of their second normalisation (adaptive group norm). The network is
fully convolutional; inputs whose sides are not multiples of its downsampling factor are padded by
reflection, run and cropped.

References:
    Ronneberger et al., "U-Net", MICCAI 2015.
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (the diffusion U-Net).
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021 (adaptive GN).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNet", "UNetConfig", "pad_to_multiple"]


NORMS = ("group", "none")


@dataclass(frozen=True)
class UNetConfig:
    """The shape of the U-Net.

    ``widths``: channels per level (level 0 is the stem's resolution); ``blocks``: residual blocks per level, one
    count for every level or one per level (the decoder has one more at each level, as in the DDPM U-Net);
    ``attention_levels``: the levels with self-attention (the middle block has it when the coarsest level does);
    ``patch``: the stem's space-to-depth factor :math:`p` (pixel-unshuffle, Shi et al., 2016, as in FFDNet), so the
    network works at :math:`1/p` of the image's resolution from its first layer; ``norm``: ``group`` (adaptive group
    norm) or ``none`` (the embedding's scale and shift only: with no attention either, the network is local, and its
    output at a pixel does not depend on how far the image extends, which is what tiling large images needs).
    """

    channels: int = 3
    widths: tuple[int, ...] = (64, 128, 192)
    blocks: int | tuple[int, ...] = 2
    attention_levels: tuple[int, ...] = (2,)
    heads: int = 4
    dropout: float = 0.0
    groups: int = 16
    patch: int = 1
    norm: str = "group"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {', '.join(NORMS)}")
        if self.patch < 1:
            raise ValueError(f"patch must be a positive integer, got {self.patch}")
        if isinstance(self.blocks, tuple) and len(self.blocks) != len(self.widths):
            raise ValueError(f"blocks has {len(self.blocks)} counts for {len(self.widths)} levels")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        names = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown U-Net options {sorted(unknown)}")
        values = dict(data)
        for key in ("widths", "attention_levels"):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        if isinstance(values.get("blocks"), list):
            values["blocks"] = tuple(int(v) for v in values["blocks"])
        return cls(**values)

    @property
    def level_blocks(self) -> tuple[int, ...]:
        """The encoder's residual blocks at each level."""
        return self.blocks if isinstance(self.blocks, tuple) else (self.blocks,) * len(self.widths)

    @property
    def factor(self) -> int:
        """The downsampling factor: image sides must be multiples of it (or are padded to one)."""
        return self.patch * 2 ** (len(self.widths) - 1)


def _norm(width: int, cfg: UNetConfig) -> nn.Module:
    return nn.GroupNorm(math.gcd(cfg.groups, width), width) if cfg.norm == "group" else nn.Identity()


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of the scalar noise feature, then a two-layer MLP."""

    def __init__(self, features: int, width: int) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(-math.log(1e4) * torch.arange(features // 2) / (features // 2)))
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c: Tensor) -> Tensor:
        angles = 1e3 * c[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([angles.cos(), angles.sin()], dim=1))


class ResBlock(nn.Module):
    """GN → SiLU → conv → adaptive GN (scale, shift from the embedding) → SiLU → dropout → conv, plus skip."""

    def __init__(self, width_in: int, width_out: int, embedding: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.norm1 = _norm(width_in, cfg)
        self.conv1 = nn.Conv2d(width_in, width_out, 3, padding=1)
        self.modulation = nn.Linear(embedding, 2 * width_out)
        self.norm2 = _norm(width_out, cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(width_out, width_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(width_in, width_out, 1) if width_in != width_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.modulation(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, width: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.norm = _norm(width, cfg)
        self.qkv = nn.Conv2d(width, 3 * width, 1)
        self.proj = nn.Conv2d(width, width, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Block(nn.Module):
    """A residual block, followed by self-attention where the level has it."""

    def __init__(self, width_in: int, width: int, embedding: int, attention: bool, cfg: UNetConfig) -> None:
        super().__init__()
        self.res = ResBlock(width_in, width, embedding, cfg)
        self.attention = Attention(width, cfg) if attention else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attention(self.res(x, emb))


def _level(widths_in: list[int], width: int, embedding: int, attention: bool, cfg: UNetConfig) -> nn.ModuleList:
    return nn.ModuleList(Block(w, width, embedding, attention, cfg) for w in widths_in)


def pad_to_multiple(z: Tensor, factor: int) -> Tensor:
    """``z`` padded at the bottom and right to sides that are multiples of ``factor``: by reflection, or by repeating
    the edge where the image is too small to reflect. What the U-Net does to inputs off its downsampling grid, and
    what :class:`sda_cli.tiles.TiledDenoiser` does before cutting tiles on that grid."""
    height, width = z.shape[-2:]
    pad_h, pad_w = (-height) % factor, (-width) % factor
    if not (pad_h or pad_w):
        return z
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(z, (0, pad_w, 0, pad_h), mode=mode)


class UNet(nn.Module):
    """A diffusion U-Net :math:`F_\\theta(z, c)` configured by :class:`UNetConfig`."""

    def __init__(self, config: UNetConfig, *, precision: torch.dtype | None = None) -> None:
        super().__init__()
        self.config = config
        self.precision = precision
        """The autocast dtype of inference (``sda_cli.denoiser.autocast_dtype``); ``None``: the caller's context."""
        widths, counts = list(config.widths), config.level_blocks
        embedding = 4 * widths[0]
        self.embed = NoiseEmbedding(widths[0], embedding)
        pixels = config.channels * config.patch**2
        self.unshuffle = nn.PixelUnshuffle(config.patch)
        self.stem = nn.Conv2d(pixels, widths[0], 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [widths[0]]
        current = widths[0]
        for i, width in enumerate(widths):
            n = counts[i]
            self.down.append(
                _level([current] + [width] * (n - 1), width, embedding, i in config.attention_levels, config)
            )
            current = width
            skips += [width] * n
            if i < len(widths) - 1:
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skips.append(width)

        coarsest = len(widths) - 1 in config.attention_levels
        self.mid = _level([current, current], current, embedding, coarsest, config)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            widths_in = []
            for _ in range(counts[i] + 1):
                widths_in.append(current + skips.pop())
                current = width
            self.up.append(_level(widths_in, width, embedding, i in config.attention_levels, config))
            if i > 0:
                self.upsample.append(nn.Conv2d(width, width, 3, padding=1))

        self.head = nn.Sequential(_norm(current, config), nn.SiLU(), nn.Conv2d(current, pixels, 3, padding=1))
        self.shuffle = nn.PixelShuffle(config.patch)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        height, width = z.shape[-2:]
        z = pad_to_multiple(z, self.config.factor)

        emb = self.embed(c)
        h = self.stem(self.unshuffle(z))
        skips = [h]
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, emb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for i, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.shuffle(self.head(h))
        return out[..., :height, :width]
