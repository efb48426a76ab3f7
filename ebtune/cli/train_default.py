"""`ebtune train-default`: reproduce the embedded dit-tiny and its FID classifier from a seed."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-default",
        help="retrain the embedded dit-tiny and its FID classifier",
        description="Train dit-tiny (DiT recipe on scikit-learn's digits, EMA weights) and the digits classifier "
        "whose penultimate layer is dit-tiny's FID feature network. Writes dit-tiny.safetensors, "
        "classifier.safetensors and digits_train_stats.npz to out=. Runs on one CPU thread, so the files are "
        "bit-identical to the shipped ones with the same torch build: about 30 minutes. Overrides: out=DIR "
        "(default outputs/train-default), steps=N (DiT training steps), seed=S (default 0).",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from ebtune.default.classifier import WEIGHTS_DIR, build_shipped_files
    from ebtune.default.train import TrainConfig, save_weights, train_dit
    from ebtune.run.overrides import settings

    given = settings("train-default", args.overrides, {"out": str, "steps": int, "seed": int})
    # Parallel reductions sum in a thread-count-dependent order, and training amplifies the last-bit
    # differences; one thread makes a seed mean the same weights on every machine.
    torch.set_num_threads(1)
    cfg = TrainConfig(seed=given.get("seed", 0))
    if "steps" in given:
        cfg = dataclasses.replace(cfg, steps=given["steps"])
    out = Path(given.get("out", "outputs/train-default"))
    out.mkdir(parents=True, exist_ok=True)
    build_shipped_files(out, seed=cfg.seed)
    ema = train_dit(cfg)
    save_weights(ema, out / "dit-tiny.safetensors")
    print(f"wrote {out / 'dit-tiny.safetensors'}; use it with model.ckpt={out / 'dit-tiny.safetensors'}, "
          f"or copy the three files into {WEIGHTS_DIR} to replace the embedded ones")
    return 0
