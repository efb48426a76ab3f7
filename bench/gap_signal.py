"""Does the exposure-bias gap of a trial's proxy images predict its quality? dit-tiny, in one run.

    .venv/bin/python bench/gap_signal.py [--json bench/results-gap-signal.json] [key=value ...]

Evaluates a fixed panel of schedules (no cache and FORA(2)/(3) under no, constant and the paper's
b(t) ε scaling, the EB-Cache table, the ebcache space's seeds) as a search would (same images,
seeds and labels for all), recording on the first `metric.n_proxy` images the gap profile G_i of the
ε the sampler used (`ebtune.search.gap_gate`) and of the model's unscaled prediction, and reports
each statistic's Spearman correlation with FID on all `metric.n_samples` images, and which pairs
the gap rule (`gap_beaten`'s conditions, with the bootstrap spread of each side standing in for the
paired error) would stop, with the FID difference it would have cost.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ebtune.cli.config import compose  # noqa: E402
from ebtune.schedules.spec import ScheduleSpec  # noqa: E402
from ebtune.search.evaluator import Evaluator  # noqa: E402
from ebtune.search.gap_gate import GapGate, real_reference  # noqa: E402
from ebtune.search.pareto import NOISE_Z  # noqa: E402
from ebtune.search.space import load_space  # noqa: E402

EB = {"name": "ebcache", "b_h": 0.98, "b_l": 0.96, "t_s": 0.4}
NONE = {"name": "none"}
PANEL = [
    ("nocache", "none", {}, NONE), ("nocache+eb", "none", {}, EB),
    ("const0.97", "none", {}, {"name": "constant", "value": 0.97}),
    ("const1.03", "none", {}, {"name": "constant", "value": 1.03}),
    ("fora2", "fora", {"interval": 2}, NONE), ("fora3", "fora", {"interval": 3}, NONE),
    ("fora2+eb", "fora", {"interval": 2}, EB), ("fora3+eb", "fora", {"interval": 3}, EB),
    ("ebtable+eb", "ebcache-table", {}, EB),
    ("fora3+c1.03", "fora", {"interval": 3}, {"name": "constant", "value": 1.03}),
    ("fora2+c0.95", "fora", {"interval": 2}, {"name": "constant", "value": 0.95}),
]
STATISTICS = ("S", "S_unscaled", "last3", "quality_proxy")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json")
    p.add_argument("--real-images", type=int, default=128)
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = compose(["model=dit-tiny", "metric.n_samples=128", "metric.batch_size=32", "metric.latency_warmup=1",
                   "metric.n_proxy=32", "device=cpu", *a.overrides], config_name="search")
    ev = Evaluator(cfg, "cpu")
    reference = real_reference(ev, a.real_images)
    space = load_space("ebcache")
    panel = list(PANEL)
    for i, seed in enumerate(space.seeds):
        spec = space.spec({**space.corners()[0], **seed})
        panel.append((f"ebcache seed {i}", spec.family, dict(spec.params), spec.eps_form))
    rows, seen = [], []
    for name, family, params, eps in panel:
        schedule = ScheduleSpec.of(family, params, eps).build(ev.ctx)
        if schedule in seen:  # a seed that is a panel schedule already (FORA with b(t))
            continue
        seen.append(schedule)
        gate = GapGate(lambda proxy, draws: True, [], reference, ev.loaded.config.in_channels, ev.n_proxy,
                       ev.bootstrap, ev.seed)
        m = ev.evaluate(schedule, None, gate=gate).metrics
        scaled = gate._recorder.per_image()[: ev.n_proxy]
        unscaled = scaled / np.asarray(schedule.eps_scale)
        G = scaled.mean(0) - reference
        rows.append({"name": name, "fid": m[ev.metric.name], "fid_std": m[f"{ev.metric.name}_std"], "quality_proxy": m["quality_proxy"],
                     "speedup": m["speedup"], "S": gate.record.gap, "S_sd": float(np.std(gate.record.draws)),
                     "S_unscaled": float(np.mean(np.abs(unscaled.mean(0) - reference))), "last3": float(G[-3:].mean())})
        print(json.dumps(rows[-1]), flush=True)
    fid = [r["fid"] for r in rows]
    report = {"settings": cfg["metric"], "steps": cfg["steps"], "real_images": a.real_images, "rows": rows,
              "spearman_with_fid": {k: float(spearmanr([r[k] for r in rows], fid).statistic) for k in STATISTICS},
              "would_stop": {}}
    for stat in ("S", "S_unscaled"):
        report["would_stop"][stat] = [
            {"trial": mine["name"], "by": known["name"], "fid_cost": mine["fid"] - known["fid"]}
            for mine in rows for known in rows
            if known is not mine and known["speedup"] >= mine["speedup"] and known["quality_proxy"] <= mine["quality_proxy"]
            and known[stat] < mine[stat] - NOISE_Z * float(np.hypot(mine["S_sd"], known["S_sd"]))]
    print(json.dumps({k: report[k] for k in ("spearman_with_fid", "would_stop")}, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
