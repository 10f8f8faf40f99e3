"""Print each named group's learning rate over a short schedule, from a YAML group spec.

Run: ``python examples/lr_table.py`` (``make demo-groups``). It builds the groups the way the
``model.param_groups`` block of a LightningCLI config does and steps every group's schedule.
"""

from __future__ import annotations

import argparse

import yaml
from jsonargparse import ArgumentParser

from mslightning.demos import TinyStreamsModel
from mslightning.optim import ParamGroup, configure_grouped_optimizers

SPEC = """
optimizer:
  class_path: torch.optim.AdamW
  init_args: {lr: 1.0e-4, weight_decay: 2.0e-2}
param_groups:
  - name: rgb                     # predecessor's stream1_lr / stream1_weight_decay
    params: [encoders.rgb.*, aux_heads.rgb.*]
    lr: 5.0e-4
    weight_decay: 1.0e-3
    interval: step
    scheduler:
      class_path: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
      init_args: {T_0: 4, T_mult: 2, eta_min: 1.0e-5}
  - name: depth                   # stream2_lr / stream2_weight_decay, with warm-up
    params: [encoders.depth.*, aux_heads.depth.*]
    lr: 5.0e-5
    weight_decay: 5.0e-2
    interval: step
    warmup: 3
    scheduler:
      class_path: torch.optim.lr_scheduler.CosineAnnealingLR
      init_args: {T_max: 12}
  - name: head                    # everything else, 10x the base lr, constant
    lr_scale: 10
    max_grad_norm: 1.0
"""


def main() -> None:
    """Parse the spec as LightningCLI would, then print the per-group lr table."""
    cli_args = argparse.ArgumentParser(description=__doc__)
    cli_args.add_argument("--steps", type=int, default=16)
    steps = cli_args.parse_args().steps

    parser = ArgumentParser()
    parser.add_class_arguments(TinyStreamsModel, "model")
    config = parser.parse_object({"model": yaml.safe_load(SPEC)})
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    model = instantiate(config).model
    groups: list[ParamGroup] = model.param_group_specs
    optimizers, schedulers = configure_grouped_optimizers(model, model.optimizer_factory, groups)
    optimizer = optimizers[0]

    names = [pg["name"] for pg in optimizer.param_groups]
    print("Named parameter groups (one schedule per group):")
    for pg in optimizer.param_groups:
        count = sum(p.numel() for p in pg["params"])
        print(
            f"  {pg['name']:<6} {count:>5} params  weight_decay={pg['weight_decay']:.0e}"
            f"  max_grad_norm={pg['max_grad_norm']}"
        )
    print()
    print("step " + "".join(f"{name:>12}" for name in names))
    for step in range(steps):
        print(f"{step:>4} " + "".join(f"{pg['lr']:>12.3e}" for pg in optimizer.param_groups))
        optimizer.zero_grad()
        optimizer.step()
        for config in schedulers:
            config["scheduler"].step()


if __name__ == "__main__":
    main()
