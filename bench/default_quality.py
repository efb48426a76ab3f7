"""Quality bars of the embedded dit-tiny (issue 3), measured in one run.

    .venv/bin/python bench/default_quality.py [--n 1000] [--grid docs/dit-tiny-grid.png] [--json FILE]

Reports the classifier's held-out accuracy on real digits, the share of uncached 50-step samples
classified as their conditioning label, and two quality numbers (against the train split): the
classifier's FD (`digits`) and dit-tiny's search objective (`digits-native`, with its bootstrap
standard error), for:
the real test split, uncached 50 and 10 steps, FORA(4) at 50 steps, and an untrained model; all on
the same seeds and class-balanced labels. Also writes a grid with one row per class.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ebtune.cli.config import compose
from ebtune.core.uint8 import quantize, to_uint8
from ebtune.default import classifier as clf
from ebtune.default import data
from ebtune.io.grids import save_grid
from ebtune.metrics.fid import classifier_accuracy
from ebtune.metrics.registry import make_metric
from ebtune.run.factory import model_spec, sampler_from
from ebtune.run.generate import class_balanced_labels, generate
from ebtune.run.loading import load_model
from ebtune.schedules import ScheduleContext, fora


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default="docs/dit-tiny-grid.png")
    p.add_argument("--json")
    a = p.parse_args()
    fid, native = make_metric("digits"), make_metric("digits-native")
    _, _, x_test, y_test = data.load_digits_split()
    clf_acc = clf.accuracy(clf.load_classifier(), clf.from_uint8(quantize(x_test)), y_test)
    real = to_uint8(x_test)
    rows = {"real test split": {"fid": fid.distance(real), "native": native.score(real, 50),
                                "accuracy": classifier_accuracy(real, y_test.numpy())}}
    labels = class_balanced_labels(a.n, 10)
    for name, steps, sched, untrained in [("uncached 50 steps", 50, None, False), ("uncached 10 steps", 10, None, False),
                                           ("FORA(4) 50 steps", 50, "fora4", False), ("untrained model", 50, None, True)]:
        cfg = compose([f"steps={steps}"])
        spec = model_spec(cfg["model"])
        loaded = load_model(spec, random_weights=untrained)
        sampler = sampler_from(cfg, spec)
        schedule = fora(ScheduleContext(steps, loaded.config.depth, sampler.times), 4) if sched else None
        start = time.perf_counter()
        out = generate(loaded, sampler, schedule, labels, seed=a.seed)
        rows[name] = {"fid": fid.distance(out.images), "native": native.score(out.images, 50), "accuracy": classifier_accuracy(out.images, out.labels),
                      "seconds": time.perf_counter() - start, "sampler": cfg["sampler"]["name"], "cfg_scale": sampler.guidance.scale}
        if name == "uncached 50 steps" and a.grid:
            order = np.argsort(out.labels[:100], kind="stable")  # one row per class
            save_grid(out.images[:100][order], a.grid, ncol=10)
    print(f"classifier held-out accuracy on real digits: {clf_acc:.4f} ({len(y_test)} images)")
    print(f"{'set':<20}{'digits-FID':>12}{'digits-native':>18}{'accuracy':>10}{'seconds':>9}")
    for name, r in rows.items():
        print(f"{name:<20}{r['fid']:>12.3f}{r['native'][0]:>11.2f} ± {r['native'][1]:<4.2f}{r['accuracy']:>10.3f}"
              f"{r.get('seconds', float('nan')):>9.1f}")
    f = {k: r["native"][0] for k, r in rows.items()}
    order_ok = (f["real test split"] < f["uncached 50 steps"] < f["uncached 10 steps"]
                and f["uncached 50 steps"] < f["FORA(4) 50 steps"] < f["untrained model"]
                and f["uncached 10 steps"] < f["untrained model"])
    print(f"digits-native ordering real < 50 < 10 and 50 < FORA(4) < untrained: {'yes' if order_ok else 'NO'}")
    print(f"bars: classifier >= 0.97: {clf_acc >= 0.97}; uncached-50 accuracy >= 0.90: {rows['uncached 50 steps']['accuracy'] >= 0.90}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"n": a.n, "seed": a.seed, "classifier_accuracy": clf_acc, "rows": rows, "order_ok": order_ok}, fh, indent=2)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
