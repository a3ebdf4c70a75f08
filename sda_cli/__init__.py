"""sda: score-based diffusion on images, from the command line and from Python.

The Python API gives the same numbers as the command line::

    from sda_cli import load_model, denoise, sample

    model = load_model("cifar10")                       # a shipped name or a .safetensors path
    estimate, std = denoise(model, noisy, sigma=0.1)    # noisy: (B, C, H, W) in [0, 1]
    images = sample(model, 16, seed=0)                  # (16, 3, 32, 32) in [0, 1]
"""

from sda_cli.generate import sample
from sda_cli.models import load_model
from sda_cli.restore import denoise, restore

__all__ = ["denoise", "load_model", "restore", "sample"]
__version__ = "0.1.0"
