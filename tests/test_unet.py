import pytest
import torch

from sda_cli.unet import UNet, UNetConfig

CONFIG = UNetConfig(channels=3, widths=(16, 32, 32), blocks=1, attention_levels=(2,), heads=2, groups=8)


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 17, 23), (1, 3, 5, 3), (3, 3, 32, 8)])
def test_any_size_gives_same_size(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = UNet(CONFIG)
    torch.nn.init.normal_(net.head[-1].weight)  # the output layer starts at zero; make it visible
    out = net(torch.randn(shape), torch.zeros(shape[0]))
    assert out.shape == shape
    assert out.abs().sum() > 0


def test_odd_sizes_are_padded_by_reflection_and_cropped() -> None:
    """A 13x14 input runs as its reflection-padded 16x16 version, then is cropped back."""
    torch.manual_seed(0)
    net = UNet(CONFIG).eval()
    torch.nn.init.normal_(net.head[-1].weight)
    x, c = torch.randn(1, 3, 13, 14), torch.zeros(1)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="reflect")
    assert torch.allclose(net(x, c), net(padded, c)[..., :13, :14], atol=1e-6)


def test_noise_feature_changes_output() -> None:
    torch.manual_seed(0)
    net = UNet(CONFIG)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(net(x, torch.tensor([-1.0])), net(x, torch.tensor([1.0])))


def test_config_round_trip() -> None:
    assert UNetConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"widths": [8], "colour": 1})
