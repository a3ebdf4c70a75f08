"""Write a run's raw (not averaged) weights as a model file, to measure what the EMA adds.

``sda train`` writes the EMA weights to its model file and keeps the raw weights θ only in the training state
beside it. The EMA θ̄ ← d·θ̄ + (1 − d)·θ averages over about 1/(1 − d) steps (decay 0.999: 1,000 steps, a half-life
of 693); the raw weights are the other end of that choice, an average over no steps. After a learning-rate decay to
zero (``--decay``) the raw weights are themselves averaged by the falling rate, so sampling both files with
``sample_quality.py`` measures which averaging length the shipped model should take (EDM2, Karras et al., 2024,
"Analyzing and Improving the Training Dynamics of Diffusion Models", section 3: the best EMA length depends on the
schedule and is found by measurement).

Usage: ``python benchmarks/raw_weights.py runs/cifar10/cifar10.safetensors raw.safetensors`` (the model file; its
training state ``cifar10.state.safetensors`` is read from beside it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sda_cli.checkpoint import load_state, read_checkpoint, save_model
from sda_cli.train import state_path_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a run's model file, with its training state beside it")
    parser.add_argument("out", type=Path, help="where to write the raw weights as a model file")
    args = parser.parse_args()
    denoiser, config = read_checkpoint(args.model)
    tensors, meta = load_state(state_path_for(args.model))
    if meta["step"] != config["training"]["step"]:
        parser.error(f"the state is at step {meta['step']}, the model file at {config['training']['step']}")
    raw = {name.removeprefix("model."): t for name, t in tensors.items() if name.startswith("model.")}
    denoiser.backbone.load_state_dict(raw)
    save_model(args.out, denoiser, {**config, "training": {**config["training"], "weights": "raw (no EMA)"}})
    print(f"wrote {args.out}: the raw weights of step {meta['step']}")


if __name__ == "__main__":
    main()
