"""Resolution of the quality metrics, for `metric_validation.py`: per metric and number of images n, the
smallest controlled degradation of each family that paired inference separates from uncached 50 steps,
and the equivalence margin the data support.

A search with n images sees the first n images of every set (the same seeds and labels), and resamples
the same image indices for every set of that size. So each panel set is cut to its first n images and
scored on a bootstrap over those n: the shipped metrics by their own `score_draws` (the estimator the
search uses), the candidates on the panel's shared bootstrap counts (`Suite.counts`). The decisions are
the search's (`ebtune.search.inference`): a level is *separated* when the paired difference clears its
one-sided 95 % bound, d > 1.645·se; TOST calls two sets equivalent within a margin m when
|d| + 1.645·se < m, so |d| + 1.645·se at an invisible degradation is the smallest margin that calls it
equivalent.
"""
from __future__ import annotations

import numpy as np

from ebtune.metrics.digits_native import native_pixels
from ebtune.search.inference import Z_95, paired_difference

METRICS = ("digits-native", "digits", "fd_px8", "fd_pca8w", "pair_px")
SIZES = (256, 500, 1000)
BASE = "nocache50"
# The faintest pixel noise that shows in the images and the strongest that does not (grid-resolution.png).
VISIBLE, INVISIBLE = "noise4", "noise2"
LEVEL = {"noise": ("noise", "σ={}"), "blur": ("blur", "σ={}"), "steps": ("nocache", "{} steps"), "fora": ("fora", "k={}"),
         "eps_low": ("eps", "×{}"), "eps_high": ("eps", "×{}")}


def draws_at(suite, sets: dict[str, dict], names: list[str], n: int) -> dict[str, dict[str, tuple[float, np.ndarray]]]:
    """{set: {metric: (value on the first n images, bootstrap draws over them)}}."""
    base = sets[BASE]["images"][:n].astype(np.float64)
    cnt = suite.counts(n)
    out = {}
    for name in names:
        imgs = sets[name]["images"][:n]
        px8 = native_pixels(imgs)
        rms = np.sqrt(((imgs.astype(np.float64) - base).mean(-1) ** 2).reshape(n, -1).mean(1))
        out[name] = {"digits-native": suite.native_fid.score_draws(imgs, suite.boot, suite.seed),
                     "digits": suite.clf_fid.score_draws(imgs, suite.boot, suite.seed),
                     "fd_px8": suite.fd_draws(px8, "px8", cnt),
                     "fd_pca8w": suite.fd_draws((px8 - suite.pca_mean) @ suite.pca, "pca8w", cnt),
                     "pair_px": (float(rms.mean()), cnt @ rms / n)}
    return out


def versus_base(draws: dict, metric: str, name: str) -> dict:
    """Paired difference name − uncached 50 and the search's decisions on it."""
    (va, da), (vb, db) = draws[name][metric], draws[BASE][metric]
    d = paired_difference(da, db, va, vb)
    return {"set": name, "diff": d.value, "se": d.se, "separated": bool(d.low > 0), "reversed": bool(d.high < 0),
            "tost_margin": abs(d.value) + Z_95 * d.se}


def resolve(draws: dict, families: dict[str, list[str]]) -> dict[str, dict]:
    """{metric: per family the levels (mild -> strong) and the first separated one; the visible noise
    level's paired difference; the smallest margin that calls the invisible noise level equivalent}."""
    out = {}
    for metric in METRICS:
        fams = {}
        for fam, names in families.items():
            levels = [versus_base(draws, metric, s) for s in names[1:]]
            # A lone separated level below an unseparated one is a chance crossing of the bound (1 in 20 per
            # level), not resolution: the mildest level from which every stronger level is separated counts.
            stable = [i for i in range(len(levels)) if all(lv["separated"] for lv in levels[i:])]
            fams[fam] = {"levels": levels, "first": levels[stable[0]] if stable else None}
        out[metric] = {"families": fams, "visible": versus_base(draws, metric, VISIBLE),
                       "invisible": versus_base(draws, metric, INVISIBLE)}
    return out


def resolution(suite, sets: dict[str, dict], families: dict[str, list[str]]) -> dict[int, dict]:
    names = sorted({s for f in families.values() for s in f})
    return {n: resolve(draws_at(suite, sets, names, n), families) for n in SIZES}


def level(fam: str, name: str) -> str:
    prefix, label = LEVEL[fam]
    return label.format(name[len(prefix):])


def cell(fam: str, f: dict) -> str:
    """The first separated level with its paired difference ± se, or why there is none."""
    if f["first"] is not None:
        lv = f["first"]
        return f"{level(fam, lv['set'])}: {lv['diff']:+.3g} ± {lv['se']:.2g}"
    rev = [level(fam, lv["set"]) for lv in f["levels"] if lv["reversed"]]
    return "none" + (f" (better at {', '.join(rev)})" if rev else "")


def markdown(res: dict[int, dict], families: dict[str, list[str]]) -> list[str]:
    fams = list(families)
    vis, inv = level("noise", VISIBLE), level("noise", INVISIBLE)
    ladder = "; ".join(f"{f} " + ", ".join(level(f, s) for s in names[1:]) for f, names in families.items())
    lines = ["", "## Resolution: the smallest controlled degradation separated from uncached 50 steps", "",
             "Each set cut to its first n images (what a search with n images sees: the same seeds and labels) and "
             "bootstrapped over those n, the same resampled indices for every set. Cell: the mildest level of the family "
             "from which every level's PAIRED difference to uncached 50 clears its one-sided 95 % bound (d > 1.645 "
             "paired se), as d ± paired se; `none` = the strongest level does not (`better at` = levels significantly "
             f"better than uncached, against their construction). Levels, mild -> strong: {ladder}. `{vis}` = the faintest noise visible in the "
             f"images: its paired difference ± se. `margin {inv}` = |d| + 1.645 se at the invisible {inv}: the smallest "
             "`metric.margin` with which TOST calls uncached 50 equivalent to itself plus that noise.", "",
             "| metric | n | " + " | ".join(fams) + f" | {vis} (d ± se) | margin {inv} |", "|---|---|" + "---|" * (len(fams) + 2)]
    for metric in METRICS:
        for n, r in res.items():
            m = r[metric]
            v = m["visible"]
            lines.append(f"| {metric} | {n} | " + " | ".join(cell(f, m["families"][f]) for f in fams)
                         + f" | {v['diff']:+.3g} ± {v['se']:.2g} | {m['invisible']['tost_margin']:.3g} |")
    lines += ["", "Summary (n × metric): separated noise σ / margin that calls σ=2 equivalent / d ± se at σ=4.", "",
              "| n | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for n, r in res.items():
        lines.append(f"| {n} | " + " | ".join(summary_cell(r[m]) for m in METRICS) + " |")
    return lines


def summary_cell(m: dict) -> str:
    first = m["families"]["noise"]["first"]
    sep = level("noise", first["set"]) if first else "none"
    v = m["visible"]
    return f"{sep} / {m['invisible']['tost_margin']:.2g} / {v['diff']:+.2g} ± {v['se']:.2g}"

