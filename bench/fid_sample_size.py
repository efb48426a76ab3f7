"""FID's small-sample bias and ranking power against the sample size N, measured on dit-tiny.

    PYTHONPATH=. TORCH_HOME=DIR python bench/fid_sample_size.py --cache DIR --json bench/results-fid-sample-size.json

Findings and the dit-xl defaults derived from them: docs/fid-sample-size.md.

Generates one pool of dit-tiny images (DDPM 50 steps, cfg 1.5, class-balanced labels) for a good
schedule (no cache) and a degraded one (FORA(3)) on the same seeds, extracts features once per
pool and per evaluator (Inception on the first --inception-pool images, digits-native on all),
and scores R random subsets of each size N from the cached features only. Subset i uses the same
image indices (hence the same seeds) for both schedules, as a search compares its trials. Reports
mean ± std of FID_N, the fit FID_N = FID_∞ + c/N, and P(FID_N(degraded) > FID_N(good)).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from ebtune.cli.config import compose
from ebtune.core.uint8 import to_uint8
from ebtune.default import data
from ebtune.metrics.digits_native import off_range_energy
from ebtune.metrics.frechet import FrechetMetric, frechet_distance, moments
from ebtune.metrics.registry import make_metric
from ebtune.metrics.sample_size import SubsetFID, fit_inverse_n
from ebtune.run.factory import model_spec, sampler_from
from ebtune.run.generate import class_balanced_labels, generate
from ebtune.run.loading import load_model
from ebtune.schedules import ScheduleContext, make_schedule


def cached_features(evaluator: FrechetMetric, images: np.ndarray, cache: Path | None) -> np.ndarray:
    """`evaluator.features(images)`, stored under `cache` keyed by the evaluator and the image bytes,
    so a rerun of the analysis never repeats the Inception passes (~0.5–1 s per image on this CPU)."""
    if cache is None:
        return evaluator.features(images)
    key = hashlib.sha1(np.ascontiguousarray(images).tobytes() + str(images.shape).encode()).hexdigest()[:16]
    path = cache / f"{evaluator.name}-{len(images)}-{key}.npy"
    if path.is_file():
        return np.load(path)
    feats = evaluator.features(images)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    return feats


def summarize(values: np.ndarray, n: int, pool: int) -> dict:
    """Mean and std of R subset FIDs of size n. Subsets of one pool of `pool` images overlap, which
    shrinks their spread by about √((pool − n)/(pool − 1)) against independent draws of n images
    (the finite-population correction); `std_fpc` undoes it, so it estimates the std a fresh
    set of n images would show."""
    std = float(np.std(values, ddof=1))
    return {"n": n, "mean": float(np.mean(values)), "std": std, "std_fpc": std / np.sqrt((pool - n) / (pool - 1)),
            "values": [float(v) for v in values]}


def analyse(name: str, pools: dict[str, np.ndarray], reference: dict, per_image: dict[str, np.ndarray] | None,
            ns: list[int], repeats: int, seed: int, check_n: int) -> dict:
    """FID_N tables, 1/N fits and paired ranking of the two schedules for one evaluator."""
    m = len(next(iter(pools.values())))
    scorers = {s: SubsetFID(f, reference, None if per_image is None else per_image[s]) for s, f in pools.items()}
    rng = np.random.default_rng(seed)
    # The fast subset FID must be the evaluator's own number: check one subset against torch-fidelity.
    idx = rng.choice(m, check_n, replace=False)
    slow = frechet_distance(moments(torch.from_numpy(pools["good"][idx]).double()), reference)
    slow += 0.0 if per_image is None else float(per_image["good"][idx].mean())
    check = {"n": check_n, "subset_fid": scorers["good"](idx), "torch_fidelity_fid": slow}
    out: dict = {"evaluator": name, "pool": m, "check": check, "schedules": {}}
    fids: dict[str, dict[int, np.ndarray]] = {s: {} for s in pools}
    for n in ns:
        subsets = [rng.choice(m, n, replace=False) for _ in range(repeats)]  # shared by both schedules
        for s, score in scorers.items():
            fids[s][n] = np.array([score(i) for i in subsets])
    for s, score in scorers.items():
        rows = [summarize(fids[s][n], n, m) for n in ns]
        fit = fit_inverse_n(np.array(ns), np.array([r["mean"] for r in rows]), np.array([r["std_fpc"] for r in rows]) / np.sqrt(repeats))
        # std ∝ 1/√N (the estimate's noise averages over images): one scale s, then bias < std ⇔ N > (c/s)².
        scale = float(np.median([r["std_fpc"] * np.sqrt(r["n"]) for r in rows]))
        for r in rows:
            r["bias"] = fit.bias(r["n"])
        out["schedules"][s] = {"rows": rows, "fid_inf": fit.fid_inf, "c": fit.c, "fit_rms": fit.rms, "full_pool_fid": score(np.arange(m)),
                               "fit_at_pool": fit(m), "std_scale": scale, "n_bias_below_std": (fit.c / scale) ** 2}
    paired = []
    for n in ns:
        diff = fids["degraded"][n] - fids["good"][n]
        cross = fids["degraded"][n][:, None] > fids["good"][n][None, :]  # subsets i ≠ j share no seeds by design
        paired.append({**{k: v for k, v in summarize(diff, n, m).items() if k != "values"},
                       "p_paired": float(np.mean(diff > 0)), "p_unpaired": float(cross[~np.eye(repeats, dtype=bool)].mean())})
    fit = fit_inverse_n(np.array(ns), np.array([r["mean"] for r in paired]), np.array([r["std_fpc"] for r in paired]) / np.sqrt(repeats))
    out["difference"] = {"rows": paired, "delta_inf": fit.fid_inf, "c": fit.c, "fit_rms": fit.rms}
    return out


def print_table(result: dict) -> None:
    print(f"\n{result['evaluator']} (pool {result['pool']}; check at N={result['check']['n']}: "
          f"subset {result['check']['subset_fid']:.4f} vs torch-fidelity {result['check']['torch_fidelity_fid']:.4f})")
    good, bad, diff = result["schedules"]["good"], result["schedules"]["degraded"], result["difference"]
    print(f"{'N':>6}{'good mean±std':>20}{'bias c/N':>10}{'FORA3 mean±std':>20}{'bias c/N':>10}{'Δ mean±std':>18}{'P paired':>10}{'P unpaired':>11}")
    for g, b, d in zip(good["rows"], bad["rows"], diff["rows"]):
        print(f"{g['n']:>6}{g['mean']:>12.3f} ± {g['std_fpc']:<6.3f}{g['bias']:>10.3f}{b['mean']:>12.3f} ± {b['std_fpc']:<6.3f}"
              f"{b['bias']:>10.3f}{d['mean']:>10.3f} ± {d['std_fpc']:<6.3f}{d['p_paired']:>10.2f}{d['p_unpaired']:>11.2f}")
    for s, r in (("good", good), ("FORA3", bad)):
        print(f"  {s}: FID_inf {r['fid_inf']:.3f}, c {r['c']:.1f}, full pool {r['full_pool_fid']:.3f} (fit {r['fit_at_pool']:.3f}), "
              f"std ≈ {r['std_scale']:.1f}/√N, bias < std for N > {r['n_bias_below_std']:.0f}")
    print(f"  difference: Δ_inf {diff['delta_inf']:.3f}, c_Δ {diff['c']:.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=int, default=2000, help="images per schedule (digits-native uses all)")
    p.add_argument("--inception-pool", type=int, default=300, help="first images of each pool that get Inception features")
    p.add_argument("--reference-n", type=int, default=600, help="real train digits for the Inception reference (all 1,437 for digits-native)")
    p.add_argument("--ns-inception", default="25,50,100,150,200")
    p.add_argument("--ns-native", default="50,100,200,400,800,1600")
    p.add_argument("--repeats", type=int, default=20, help="random subsets R per size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, help="folder for cached features (reruns skip the Inception passes)")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    start = time.perf_counter()
    cfg = compose(["model=dit-tiny"])
    spec = model_spec(cfg["model"])
    loaded = load_model(spec)
    sampler = sampler_from(cfg, spec)
    ctx = ScheduleContext(sampler.steps, loaded.config.depth, sampler.times)
    labels = class_balanced_labels(a.pool, loaded.config.num_classes)
    images, timings = {}, {}
    for s, schedule in (("good", None), ("degraded", make_schedule("fora", ctx, interval=3))):
        out = generate(loaded, sampler, schedule, labels, seed=a.seed)
        images[s], timings[f"sample_{s}_s"] = out.images, out.seconds
    real = to_uint8(data.load_digits_split()[0])

    inception = make_metric("inception")
    t = time.perf_counter()
    ref_real = real[np.sort(np.random.default_rng(a.seed).choice(len(real), a.reference_n, replace=False))]
    reference = moments(torch.from_numpy(cached_features(inception, ref_real, a.cache)).double())
    pools = {s: cached_features(inception, x[:a.inception_pool], a.cache) for s, x in images.items()}
    timings["inception_features_s"] = time.perf_counter() - t  # ≈ 0 when every set came from the cache
    results = [analyse("inception", pools, reference, None, [int(n) for n in a.ns_inception.split(",")], a.repeats, a.seed,
                       check_n=int(a.ns_inception.split(",")[-1]))]
    native = make_metric("digits-native")
    results.append(analyse("digits-native", {s: native.features(x) for s, x in images.items()}, native.reference_statistics(),
                           {s: off_range_energy(x) for s, x in images.items()}, [int(n) for n in a.ns_native.split(",")],
                           a.repeats, a.seed, check_n=200))
    timings["total_s"] = time.perf_counter() - start
    for r in results:
        print_table(r)
    print(f"\ntimings: {', '.join(f'{k} {v:.0f}' for k, v in timings.items())}")
    if a.json:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
        a.json.write_text(json.dumps({"settings": settings, "model": "dit-tiny", "sampler": cfg["sampler"]["name"], "steps": sampler.steps,
                                      "cfg_scale": sampler.guidance.scale, "inception_reference_n": a.reference_n,
                                      "timings": timings, "results": results}, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
