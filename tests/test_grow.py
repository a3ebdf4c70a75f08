"""Per-level block counts, and deepening a trained network without changing its output (sda_cli.grow)."""

import pytest
import torch

from sda_cli.checkpoint import CheckpointError, check_config, read_checkpoint
from sda_cli.grow import grow_blocks, main
from sda_cli.unet import UNet, UNetConfig


def _trained_like(config: UNetConfig) -> UNet:
    """A network whose every weight is random, as after training (no zero-initialised output layers)."""
    torch.manual_seed(0)
    net = UNet(config).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return net


@pytest.mark.parametrize(
    ("config", "blocks"),
    [
        (UNetConfig(widths=(16, 24, 32), blocks=1, attention_levels=(), patch=2, norm="none"), (2, 2, 1)),
        (UNetConfig(widths=(16, 24, 32), blocks=1, attention_levels=(), patch=2, norm="none"), (3, 1, 2)),
        (UNetConfig(widths=(16, 32), blocks=2, attention_levels=(1,), heads=2, groups=8), (4, 3)),
    ],
)
def test_grown_network_computes_the_same_function(config: UNetConfig, blocks: tuple[int, ...]) -> None:
    small = _trained_like(config)
    grown = grow_blocks(small, blocks).eval()
    assert grown.config.level_blocks == blocks
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in small.parameters())
    z, c = torch.randn(2, 3, 32, 32), torch.tensor([-1.5, 0.7])
    with torch.no_grad():
        torch.testing.assert_close(grown(z, c), small(z, c), rtol=1e-5, atol=1e-5)


def test_grown_blocks_are_trainable() -> None:
    """The identities are a starting point: one gradient step moves the new blocks' last convolutions."""
    small = _trained_like(UNetConfig(widths=(16, 24), blocks=1, attention_levels=(), patch=2, norm="none"))
    grown = grow_blocks(small, (2, 1))
    loss = grown(torch.randn(1, 3, 16, 16), torch.zeros(1)).square().mean()
    loss.backward()
    assert grown.down[0][1].res.conv2.weight.grad.abs().sum() > 0
    assert grown.up[1][1].res.conv2.weight.grad.abs().sum() > 0


def test_grow_refuses_fewer_blocks() -> None:
    small = _trained_like(UNetConfig(widths=(16, 24), blocks=2, attention_levels=()))
    with pytest.raises(ValueError, match="none fewer"):
        grow_blocks(small, (1, 2))
    with pytest.raises(ValueError, match="one count per level"):
        grow_blocks(small, (2, 2, 2))


def test_block_counts_per_level_are_checked() -> None:
    base = {"format": 1, "denoiser": {}, "schedule": {"name": "cosine"}}
    model = {"channels": 3, "widths": [16, 32], "attention_levels": []}
    check_config({**base, "model": {**model, "blocks": [2, 1]}})
    for bad in ([2, 1, 1], [0, 1], 2.5, None):
        with pytest.raises(CheckpointError, match="block count"):
            check_config({**base, "model": {**model, "blocks": bad}})
    with pytest.raises(ValueError, match="2 counts for 3 levels"):
        UNetConfig(widths=(8, 16, 32), blocks=(1, 2))


def test_grow_command_writes_a_model_with_the_same_output(tiny_model, tmp_path) -> None:
    grown_file = tmp_path / "grown.safetensors"
    small, config = read_checkpoint(tiny_model)
    counts = tuple(n + 1 for n in small.backbone.config.level_blocks)
    main([str(tiny_model), str(grown_file), "--blocks", ",".join(map(str, counts))])
    grown, grown_config = read_checkpoint(grown_file)
    assert grown_config["model"]["blocks"] == list(counts)
    assert grown_config["denoiser"] == config["denoiser"]
    z, c = torch.randn(1, 3, 32, 32), torch.tensor([0.3])
    with torch.no_grad():
        torch.testing.assert_close(grown.backbone(z, c), small.backbone(z, c), rtol=1e-4, atol=1e-4)
