"""One lr for backbone and head vs "backbone 1x, head 10x": what StreamMonitor measures per part.

The predecessor's Photo Triage lesson: with SGD at one lr of 1e-4 for the whole Siamese network,
the pretrained backbone moves ten times faster than in the differential recipe (backbone 1e-5,
head 1e-4) and forgets its ImageNet features. This trains both recipes on the embedded synthetic
Photo Triage for a few steps from the same initial weights and prints StreamMonitor's per-part
figures: mean per-step update ratio ||dw||/||w||, gradient norm, and its advice.

    python examples/siamese_lr_recipes.py [--steps 40] [--image-size 64] [--weights resnet18.pth]

``--weights`` starts the trunk from a local torchvision ImageNet state_dict (the fine-tuning
case); without it the trunk starts from a fixed random initialisation (same for both runs).
"""

from __future__ import annotations

import argparse
import warnings
from functools import partial

import lightning.pytorch as pl
import torch

from mslightning.callbacks import StreamMonitor, StreamThresholds
from mslightning.data import SyntheticPhotoTriageDataModule
from mslightning.modules import SiameseRanker
from mslightning.nn import DifferenceHead, ResNetTrunk
from mslightning.optim import ParamGroup

ONE_LR = [ParamGroup("backbone", lr=1e-4), ParamGroup("head", lr=1e-4)]
DIFFERENTIAL = [ParamGroup("backbone", lr=1e-5), ParamGroup("head", lr=1e-4)]
# recipe -> (groups, compare_streams); the last run shows what the advice would say if the monitor
# compared backbone and head as if they were parallel streams
RECIPES = {
    "one lr 1e-4": (ONE_LR, None),
    "backbone 1e-5, head 1e-4": (DIFFERENTIAL, None),
    "same, parts compared as peers": (DIFFERENTIAL, True),
}


def run(recipe: str, steps: int, image_size: int, weights: str | None) -> dict[str, object]:
    """Train one recipe for one epoch of ``steps`` steps; return StreamMonitor's per-part means and advice."""
    pl.seed_everything(0, verbose=False)
    model = SiameseRanker(
        trunk=partial(ResNetTrunk, arch="resnet18", weights_path=weights),
        head=partial(DifferenceHead, hidden=128),
        optimizer=partial(torch.optim.SGD, lr=1e-4, momentum=0.9, weight_decay=5e-4),
        param_groups=RECIPES[recipe][0],
    )
    data = SyntheticPhotoTriageDataModule(image_size=image_size, batch_size=8, num_workers=0)
    # patience 1: advice after the single epoch of this short run
    monitor = StreamMonitor(
        log_every_n_steps=1, verbose=False, thresholds=StreamThresholds(patience=1), compare_streams=RECIPES[recipe][1]
    )
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor],
        log_every_n_steps=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data)
    out: dict[str, object] = {"advice": monitor.get_recommendations()}
    for part in ("backbone", "head"):
        for metric in ("update_ratio", "grad_norm"):
            (epoch_mean,) = monitor.history[f"streams/{metric}/{part}"]  # mean over the epoch's steps
            out[f"{metric}/{part}"] = epoch_mean[1]
    return out


def main() -> None:
    """Run both recipes and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--weights", default=None, help="a local torchvision resnet18 ImageNet state_dict")
    args = parser.parse_args()
    results = {recipe: run(recipe, args.steps, args.image_size, args.weights) for recipe in RECIPES}
    print(f"\nSGD momentum 0.9, weight decay 5e-4, {args.steps} steps of 8 pairs at {args.image_size} px, resnet18")
    print(f"{'recipe':<26} {'update ratio backbone':>22} {'update ratio head':>18} {'grad norm backbone':>19}")
    for recipe, result in results.items():
        print(
            f"{recipe:<26} {result['update_ratio/backbone']:>22.3g} {result['update_ratio/head']:>18.3g} "
            f"{result['grad_norm/backbone']:>19.3g}"
        )
    single, differential = (results[recipe]["update_ratio/backbone"] for recipe in list(RECIPES)[:2])
    print(f"backbone update ratio, one lr / differential: {single / differential:.1f}x")
    for recipe, result in results.items():
        print(f"\nStreamMonitor's advice ({recipe}):")
        for line in result["advice"]:
            print(f"  - {line}")


if __name__ == "__main__":
    main()
