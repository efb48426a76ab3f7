"""Validate dit-tiny's quality objective on a panel of sample sets whose order is known by construction.

    python bench/metric_validation.py --n 1000 --seed 0 --boot 100 --threads 2

Panel (DDPM, cfg 1.5, the same initial/step noise seeds and class-balanced labels for every generated
set): real held-out digits; uncached 50 steps; that set + Gaussian pixel noise (σ in 0-255 units,
clipped, re-quantised); Gaussian blur; fewer steps; FORA(k); constant ε scaling; the EB-Cache b(t);
the "trial 3" intervals schedule with b(t); FORA(3)+b(t); uncached 18 steps ± b(t).

The shipped metrics are scored by the shipped code: `digits` (the classifier FD, `make_metric("digits")`)
and `digits-native` (`DigitsNativeFD`, dit-tiny's objective: FD on `native_pixels` + the mean
`off_range_energy`). The other columns are candidates kept as small functions here. Uncertainty:
bootstrap over the generated images (the reference is fixed); the same resampled indices serve every
set of the same size, so differences between sets get a paired bootstrap distribution. The resolution
section (`metric_resolution.py`) cuts every set to its first 256, 500 and 1000 images, as a search with
that many images sees them, and reports the mildest degradation each metric separates with pairing.

Writes <out>/results.json (means, bootstrap stds, paired comparisons, resolution), <out>/results.md (the
tables), <out>/draws.npz (every bootstrap replicate of the full sets), <out>/grid.png, the mildest
degradations side by side in <out>/grid-resolution.png, and caches samples in <out>/cache.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage, stats

from ebtune.cli.config import compose
from ebtune.core.eps_scale import make_eps_scale
from ebtune.core.macs import sampling_macs
from ebtune.core.schedule import no_cache
from ebtune.core.uint8 import to_uint8
from ebtune.default import classifier, data
from ebtune.metrics.digits_native import DIGIT_UNITS, DigitsNativeFD, native_pixels, off_range_energy
from ebtune.metrics.fid import classifier_accuracy, frechet_distance
from ebtune.metrics.registry import make_metric
from ebtune.run.factory import model_spec, sampler_from
from ebtune.run.generate import class_balanced_labels, generate
from ebtune.run.loading import load_model
from ebtune.schedules import ScheduleContext, make_schedule
from metric_resolution import SIZES as RESOLUTION_SIZES, markdown as resolution_md, resolution

# ----------------------------------------------------------------------------------------------
# Candidate features and metric primitives (the shipped ones are imported above)
# ----------------------------------------------------------------------------------------------


def grey(images: np.ndarray) -> np.ndarray:
    """uint8 N×H×W×C -> float64 N×H×W in 0..255."""
    return images.astype(np.float64).mean(axis=-1)


def pixels16(images: np.ndarray) -> np.ndarray:
    """The 16×16 pixels as (N, 256) in digit units (0..16)."""
    return grey(images).reshape(len(images), -1) * DIGIT_UNITS


def offsub_rms(images: np.ndarray) -> np.ndarray:
    """Per-image RMS (0-255 units) of the off-upsampling-range component, from the shipped energy."""
    return np.sqrt(off_range_energy(images) / 64) / DIGIT_UNITS


def faint_share(images: np.ndarray, lo: int = 1, hi: int = 39) -> np.ndarray:
    """Per-image share of faint pixels (lo <= value <= hi): background dither and speckle."""
    g = grey(images)
    return ((g >= lo) & (g <= hi)).reshape(len(images), -1).mean(axis=1)


@torch.no_grad()
def conv_features(model: classifier.DigitClassifier, images: np.ndarray) -> np.ndarray:
    """(N, 128): channel means and RMS of the classifier's conv1/conv2 activations (texture statistics)."""
    x = classifier.from_uint8(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
    out = []
    for chunk in x.split(500):
        c = model.conv
        h1 = c[1](c[0](chunk))  # conv1 + ReLU
        h2 = c[3](c[2](h1))  # conv2 + ReLU
        out.append(torch.cat([h1.mean((2, 3)), h2.mean((2, 3)), h1.pow(2).mean((2, 3)).sqrt(), h2.pow(2).mean((2, 3)).sqrt()], 1))
    return torch.cat(out).double().numpy()


def moments(feats: np.ndarray, counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """mu and unbiased sigma of (N, D) features, each row weighted by its bootstrap multiplicity."""
    w = np.ones(len(feats)) if counts is None else counts.astype(np.float64)
    n = w.sum()
    mu = (w[:, None] * feats).sum(0) / n
    d = feats - mu
    return {"mu": mu, "sigma": (d * w[:, None]).T @ d / (n - 1)}


def kid_terms(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Kernel blocks for KID with the cubic polynomial kernel k = (x·y/d + 1)^3."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    m = len(y)
    return kxx, ((x @ y.T / d + 1) ** 3).mean(axis=1), (kyy.sum() - np.trace(kyy)) / (m * (m - 1))


def kid(kxx: np.ndarray, kxy_row: np.ndarray, kyy_mean: float, c: np.ndarray) -> float:
    """Unbiased MMD² of the generated multiset with counts c; copies of one image are excluded like the diagonal."""
    c = c.astype(np.float64)
    sxx = (c @ kxx @ c - (c ** 2 * np.diag(kxx)).sum()) / (c.sum() ** 2 - (c ** 2).sum())
    return float(sxx + kyy_mean - 2 * (c * kxy_row).sum() / c.sum())


def sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T, 0)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    return np.sqrt(np.sort(sqdist(x, x), axis=1)[:, k])


# ----------------------------------------------------------------------------------------------
# The metric suite: each metric gets a point estimate and bootstrap replicates
# ----------------------------------------------------------------------------------------------

METRICS = {  # name: (description, higher_is_better)
    "digits": ("shipped classifier FD: FD in the digits classifier's 64-d penultimate space vs the train split (make_metric('digits'))", False),
    "digits-native": ("shipped objective (DigitsNativeFD, dit-tiny's default): fd_px8 + mean off_range_energy", False),
    "kid_clf": ("KID x1e3 in classifier penultimate features vs the train split", False),
    "fd_conv": ("x1e3 FD in early-conv texture statistics of the classifier (conv1/conv2 channel mean+RMS, 128-d)", False),
    "fd_px8": ("FD on native 8x8 pixels (native_pixels, digit units 0..16) vs the train split: digits-native's first term", False),
    "fd_pca8w": ("FD on the whitened top-20 PCA of native 8x8 pixels (PCA fitted on the train split)", False),
    "kid_px8": ("KID x1e3 on native 8x8 pixels (scaled by the train split's RMS)", False),
    "fd_px16": ("FD on the full 16x16 pixels (256-d, digit units) vs the train split", False),
    "offsub": ("mean RMS (0-255 units) of the 16x16 component outside the 8x8-upsampling range: sqrt(off_range_energy/64)/(16/255)", False),
    "faint_gap": ("|share of faint pixels (1..39) - train share| x100", False),
    "prec_clf": ("precision (k=3 NN manifolds) in classifier features [diagnostic]", True),
    "rec_clf": ("recall (k=3 NN manifolds) in classifier features [diagnostic]", True),
    "prec_px8": ("precision (k=3) on native 8x8 pixels [diagnostic]", True),
    "rec_px8": ("recall (k=3) on native 8x8 pixels [diagnostic]", True),
    "pair_px": ("paired RMS pixel difference (0-255) to the uncached 50-step image from the same noise", False),
    "pair_clf": ("paired L2 distance in classifier features to the uncached 50-step image", False),
    "accuracy_err": ("classifier error rate vs the conditioning label x100", False),
}


class Suite:
    """Reference data (the train split), the shipped evaluators and the candidates; `evaluate` scores one set."""

    def __init__(self, boot: int, seed: int, k: int = 3):
        x_train, _, x_test, y_test = data.load_digits_split()
        self.train = to_uint8(x_train)
        self.test, self.test_labels = to_uint8(x_test), y_test.numpy()
        self.clf_fid, self.native_fid = make_metric("digits"), DigitsNativeFD()
        self.clf_model = classifier.load_classifier()
        self.boot, self.seed, self.k = boot, seed, k
        p8 = native_pixels(self.train)
        self.pca_mean = p8.mean(0)
        _, s, vt = np.linalg.svd(p8 - self.pca_mean, full_matrices=False)
        self.pca = vt[:20].T / (s[:20] / math.sqrt(len(p8) - 1))  # (64, 20) whitening projection
        self.px8_scale = np.sqrt(((p8 - self.pca_mean) ** 2).sum(1).mean())
        self.ref = self.features(self.train)
        self.ref_stats = {key: moments(self.ref[key]) for key in ("conv", "pca8w", "px16")}
        self.ref_stats["clf"] = self.clf_fid.reference_statistics()  # the shipped train statistics
        self.ref_stats["px8"] = self.native_fid.reference_statistics()
        self.ref_radii = {key: knn_radii(self.ref[key], k) for key in ("clf", "px8")}
        self.ref_kid = {"clf": self.ref["clf"], "px8": self.ref["px8"] / self.px8_scale}
        self.train_faint = float(self.ref["faint"].mean())
        self.uncached: dict | None = None  # features of the uncached 50-step set, for the paired metrics

    def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
        px8 = native_pixels(images)
        return {"clf": self.clf_fid.features(images).astype(np.float64), "conv": conv_features(self.clf_model, images),
                "px8": px8, "pca8w": (px8 - self.pca_mean) @ self.pca, "px16": pixels16(images),
                "energy": off_range_energy(images), "offsub": offsub_rms(images), "faint": faint_share(images)}

    def counts(self, n: int) -> np.ndarray:
        """(boot, n) bootstrap multiplicities; deterministic in (seed, n), hence shared by all sets of size n."""
        rng = np.random.default_rng(self.seed + 7 * n)
        return np.stack([np.bincount(i, minlength=n) for i in rng.integers(0, n, size=(self.boot, n))])

    def fd_draws(self, feats: np.ndarray, key: str, cnt: np.ndarray, mult: float = 1.0) -> tuple[float, np.ndarray]:
        """mult × FD of (N, D) features against the reference `key`: on all rows, and on each row of counts `cnt`."""
        ref = self.ref_stats[key]
        return mult * frechet_distance(moments(feats), ref), np.array([mult * frechet_distance(moments(feats, c), ref) for c in cnt])

    def evaluate(self, images: np.ndarray, labels: np.ndarray | None, paired: bool) -> dict[str, dict]:
        """{metric: {"value": point estimate, "boot": replicates}} for one set."""
        f = self.features(images)
        n = len(images)
        cnt = self.counts(n)
        out: dict[str, dict] = {}

        def record(name, point, reps):
            out[name] = {"value": float(point), "boot": [float(v) for v in reps]}

        def mean_of(per_image):
            return per_image.mean(), [(c * per_image).sum() / n for c in cnt]

        for key, name, mult in [("clf", "digits", 1), ("conv", "fd_conv", 1e3), ("px8", "fd_px8", 1), ("pca8w", "fd_pca8w", 1), ("px16", "fd_px16", 1)]:
            record(name, *self.fd_draws(f[key], key, cnt, mult))
        # The shipped implementations give the point estimates; the replicates use the shared counts
        # (for paired differences) on the shipped features, reference and off-range energy.
        out["digits"]["value"] = self.clf_fid.distance(images)
        native, native_std = self.native_fid.score(images, bootstrap=self.boot, seed=self.seed)
        record("digits-native", native, [b + (c * f["energy"]).sum() / n for b, c in zip(out["fd_px8"]["boot"], cnt)])
        out["digits-native"]["score_std"] = native_std  # DigitsNativeFD.score's own bootstrap, as the search reports it
        for key, name, scale in [("clf", "kid_clf", 1.0), ("px8", "kid_px8", self.px8_scale)]:
            kxx, kxy, kyy = kid_terms(f[key] / scale, self.ref_kid[key])
            record(name, 1e3 * kid(kxx, kxy, kyy, np.ones(n)), [1e3 * kid(kxx, kxy, kyy, c) for c in cnt])
        for key in ("clf", "px8"):
            d_gr = np.sqrt(sqdist(f[key], self.ref[key]))  # (n, m)
            inside = (d_gr <= self.ref_radii[key][None, :]).any(1).astype(np.float64)  # generated image in the real manifold
            record(f"prec_{key}", *mean_of(inside))
            d_gg = sqdist(f[key], f[key])

            def recall(sel):
                radii = np.sqrt(np.sort(d_gg[np.ix_(sel, sel)], axis=1)[:, self.k])
                return float((d_gr[sel] <= radii[:, None]).any(0).mean())

            # k-NN radii break under duplicated images, so recall's spread comes from half-samples without
            # replacement, whose variance approximates that of the full-size estimate (finite-population factor 1/2).
            rng = np.random.default_rng(self.seed + 11)
            record(f"rec_{key}", recall(np.arange(n)), [recall(np.sort(rng.choice(n, n // 2, replace=False))) for _ in range(self.boot)])
        record("offsub", *mean_of(f["offsub"]))
        point, reps = mean_of(f["faint"])
        record("faint_gap", 100 * abs(point - self.train_faint), [100 * abs(r - self.train_faint) for r in reps])
        record("faint_share", 100 * point, [100 * r for r in reps])
        if labels is not None:
            record("accuracy_err", 100 * (1 - classifier_accuracy(images, labels)), [])
        if paired and self.uncached is not None:
            u = self.uncached
            record("pair_px", *mean_of(np.sqrt(((grey(images) - grey(u["images"])) ** 2).reshape(n, -1).mean(1))))
            record("pair_clf", *mean_of(np.sqrt(((f["clf"] - u["clf"]) ** 2).sum(1))))
        return out


# ----------------------------------------------------------------------------------------------
# Panel
# ----------------------------------------------------------------------------------------------

NOISE = (1, 2, 4, 8, 16, 32)
BLUR = (0.5, 1.0)
STEPS = (25, 10, 5)
FORA = (2, 3, 4, 6)
EPS = (0.90, 0.95, 1.05, 1.10)
TRIAL3 = dict(warmup=0, cooldown=0, boundary=0.4, attn=3, mlp=4, attn_late=4, mlp_late=3, max_reuse=3)
BT = dict(b_h=0.98, b_l=0.96, t_s=0.4)

FAMILIES = {  # ordered best -> worst by construction
    "noise": ["nocache50"] + [f"noise{s}" for s in NOISE],
    "blur": ["nocache50"] + [f"blur{s}" for s in BLUR],
    "steps": ["nocache50"] + [f"nocache{s}" for s in STEPS],
    "fora": ["nocache50"] + [f"fora{k}" for k in FORA],
    "eps_low": ["nocache50", "eps0.95", "eps0.90"],
    "eps_high": ["nocache50", "eps1.05", "eps1.10"],
}
ORDER = (["real_test", "nocache50"] + [f"noise{s}" for s in NOISE] + [f"blur{s}" for s in BLUR] + [f"nocache{s}" for s in STEPS]
         + [f"fora{k}" for k in FORA] + [f"eps{v:.2f}" for v in EPS] + ["nocache50+bt", "trial3", "fora3+bt", "nocache18", "nocache18+bt"])
COMPARISONS = [("trial3", "nocache50"), ("trial3", "nocache50+bt"), ("trial3", "nocache18"), ("trial3", "nocache18+bt"),
               ("fora3+bt", "nocache18+bt"), ("fora3", "nocache18"), ("nocache50+bt", "nocache50"), ("nocache18+bt", "nocache18")]
GRID = {"real_test": "real", "nocache50": "no cache", "noise8": "noise s=8", "trial3": "trial 3", "fora3+bt": "FORA(3)+b(t)",
        "nocache18+bt": "18 steps+b(t)"}
# The mildest levels of each family, for judging by eye which degradation a person can see (the resolution table).
RESOLUTION_GRID = {"nocache50": "no cache", "noise2": "noise s=2", "noise4": "noise s=4", "blur0.5": "blur 0.5", "fora2": "FORA(2)",
                   "fora3": "FORA(3)", "nocache25": "25 steps", "nocache10": "10 steps", "eps0.95": "eps x0.95", "eps1.05": "eps x1.05"}


def generated_specs() -> list[dict]:
    specs = [dict(name="nocache50", steps=50, schedule="none")]
    specs += [dict(name=f"nocache{s}", steps=s, schedule="none") for s in STEPS]
    specs += [dict(name=f"fora{k}", steps=50, schedule="fora", interval=k) for k in FORA]
    specs += [dict(name=f"eps{v:.2f}", steps=50, schedule="none", eps_const=v) for v in EPS]
    specs += [dict(name="nocache50+bt", steps=50, schedule="none", bt=True),
              dict(name="trial3", steps=50, schedule="intervals", bt=True),
              dict(name="fora3+bt", steps=50, schedule="fora", interval=3, bt=True),
              dict(name="nocache18", steps=18, schedule="none"),
              dict(name="nocache18+bt", steps=18, schedule="none", bt=True)]
    return specs


def sample_set(spec: dict, n: int, seed: int, cache: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Generate (or load from `cache`) one panel set: images, labels and cost."""
    cfg = compose(["model=dit-tiny", f"steps={spec['steps']}"])
    mspec = model_spec(cfg["model"])
    loaded = load_model(mspec)
    sampler = sampler_from(cfg, mspec)
    ctx = ScheduleContext(sampler.steps, loaded.config.depth, sampler.times)
    if spec["schedule"] == "none":
        sched = no_cache(sampler.steps, loaded.config.depth)
    elif spec["schedule"] == "fora":
        sched = make_schedule("fora", ctx, interval=spec["interval"])
    else:
        sched = make_schedule("intervals", ctx, **TRIAL3)
    if spec.get("bt"):
        sched = sched.with_eps_scale(make_eps_scale("ebcache", **BT).factors(sampler.times))
    if "eps_const" in spec:
        sched = sched.with_eps_scale(make_eps_scale("constant", value=spec["eps_const"]).factors(sampler.times))
    macs = float(sampling_macs(loaded.config, sched, batch=1, cfg=sampler.guidance.active))
    path = cache / f"{spec['name']}_n{n}_s{seed}.npz"
    if path.is_file():
        z = np.load(path)
        return z["images"], z["labels"], {"macs": macs, "sample_s": float(z["seconds"]), "cached": True}
    out = generate(loaded, sampler, sched, class_balanced_labels(n, loaded.config.num_classes), seed=seed, batch_size=250)
    np.savez_compressed(path, images=out.images, labels=out.labels, seconds=out.seconds)
    return out.images, out.labels, {"macs": macs, "sample_s": out.seconds, "cached": False}


def add_noise(images: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(images.astype(np.float64) + rng.normal(0, sigma, images.shape), 0, 255).round().astype(np.uint8)


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    y = np.stack([ndimage.gaussian_filter(im[..., 0], sigma, mode="constant") for im in images.astype(np.float64)])[..., None]
    return np.clip(y, 0, 255).round().astype(np.uint8)


def save_comparison(sets: dict[str, dict], grid: dict[str, str], path: Path, per_class: int = 2, scale: int = 4) -> None:
    """One PNG: a column block per set of `grid` (set: title) with `per_class` images of every digit, the same
    noise seeds in every generated block; plain view on top, gamma 0.35 (faint pixels made visible) below."""
    from PIL import Image, ImageDraw

    h, pad, gap, head = 16, 1, 4, 12
    blocks = []
    for name in grid:
        labels = sets[name]["labels"]
        sel = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
        blocks.append(sets[name]["images"][sel, ..., 0].reshape(10, per_class, h, h))
    bw = per_class * (h + pad) + pad
    width = len(blocks) * (bw + gap) - gap
    height = 10 * (h + pad) + pad
    views = []
    for g in (1.0, 0.35):
        canvas = np.full((height, width), 255, np.uint8)
        for b, imgs in enumerate(blocks):
            x0 = b * (bw + gap)
            canvas[:, x0:x0 + bw] = 90
            for c in range(10):
                for j in range(per_class):
                    y, x = pad + c * (h + pad), x0 + pad + j * (h + pad)
                    canvas[y:y + h, x:x + h] = (255 * (imgs[c, j] / 255.0) ** g).astype(np.uint8)
        views.append(canvas.repeat(scale, 0).repeat(scale, 1))
    img = Image.new("L", (views[0].shape[1], 2 * (views[0].shape[0] + head)), 255)
    draw = ImageDraw.Draw(img)
    for v, (view, label) in enumerate(zip(views, ("", " (gamma 0.35)"))):
        y0 = v * (view.shape[0] + head)
        img.paste(Image.fromarray(view), (0, y0 + head))
        for b, title in enumerate(grid.values()):
            draw.text((b * (bw + gap) * scale + 2, y0), title + label if b == 0 else title, fill=0)
    img.save(path, optimize=True)


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------


def sign(metric: str) -> int:
    """+1 where lower is better, −1 for precision/recall."""
    return -1 if METRICS[metric][1] else 1


def monotone(results: dict, metric: str) -> dict:
    """Per family: pass if the point estimates get strictly worse at every step; `robust` if no step is
    significantly better than its predecessor (each P(worse) ≥ 0.05 over paired replicates)."""
    out = {}
    for fam, names in FAMILIES.items():
        vals = [results[s]["metrics"][metric]["value"] for s in names]
        ok = all(sign(metric) * (b - a) > 0 for a, b in zip(vals, vals[1:]))
        p_worse = []
        for a, b in zip(names, names[1:]):
            ra, rb = results[a]["metrics"][metric]["boot"], results[b]["metrics"][metric]["boot"]
            if ra and len(ra) == len(rb):
                p_worse.append(float(np.mean(sign(metric) * (np.array(rb) - np.array(ra)) > 0)))
        out[fam] = {"pass": bool(ok), "robust": bool(all(p >= 0.05 for p in p_worse)), "values": vals, "p_worse": p_worse}
    return out


def order_agreement(results: dict, metric: str) -> float:
    """Share of within-family pairs (i better than j by construction) that the metric orders correctly."""
    good = total = 0
    for names in FAMILIES.values():
        vals = [sign(metric) * results[s]["metrics"][metric]["value"] for s in names]
        for i in range(len(vals)):
            for j in range(i + 1, len(vals)):
                total += 1
                good += vals[i] < vals[j]
    return good / total


def paired_compare(results: dict, metric: str, a: str, b: str) -> dict:
    """a minus b (negative = a better for lower-is-better metrics), its paired-bootstrap std and P(a better)."""
    ma, mb = results[a]["metrics"][metric], results[b]["metrics"][metric]
    d = sign(metric) * (np.array(ma["boot"]) - np.array(mb["boot"]))
    return {"diff": ma["value"] - mb["value"], "std": float(d.std(ddof=1)), "p_a_better": float(np.mean(d < 0))}


def fmt(m: dict) -> str:
    v = m["value"]
    if not m["boot"]:
        return f"{v:.3g}"
    s = m["std"]
    digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2 if abs(v) >= 1 else 3
    return f"{v:.{digits}f} ± {s:.{digits}f}" if s >= 10 ** -digits else f"{v:.{digits}f} ± {s:.1g}"


def markdown(a: argparse.Namespace, results: dict, mono: dict, agree: dict, never: dict, spearman: np.ndarray,
             rank_metrics: list[str], comparisons: dict, resolution_lines: list[str], wall_s: float) -> str:
    cols = list(METRICS) + ["faint_share"]
    lines = [f"# dit-tiny metric validation (n={a.n}, seed={a.seed}, bootstrap={a.boot})", "",
             "`digits` is the classifier FD and `digits-native` dit-tiny's shipped objective, both scored by the shipped code; "
             "the other columns are candidates. Lower is better except prec_*/rec_* (↑). Values: point estimate ± bootstrap std "
             f"over images (real_test: the {results['real_test']['n']} held-out digits; the others: generated sets of {a.n} images "
             "from the same noise seeds). Reference for every distribution metric: the train split.", "",
             "## Main panel", "",
             "| set | speedup | " + " | ".join(c + (" ↑" if c in METRICS and METRICS[c][1] else "") for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for s in ORDER:
        r = results[s]
        sp = f"{r['speedup']:.2f}" if r["speedup"] else "-"
        lines.append(f"| {s} | {sp} | " + " | ".join(fmt(r["metrics"][c]) if c in r["metrics"] else "-" for c in cols) + " |")
    fams = list(FAMILIES)
    lines += ["", "## Monotonicity", "",
              "Cell: pass = strictly worse at every step of the family (point estimates); `(r)` = no step significantly "
              "reversed (each P(worse) ≥ 0.05 over paired replicates), `(R!)` = some step significantly reversed. "
              "noise_never_helps = every σ worse than σ=0; order_agree = share of within-family pairs ranked as constructed.", "",
              "| metric | " + " | ".join(fams) + " | noise_never_helps | order_agree | all strict |",
              "|---|" + "---|" * (len(fams) + 3)]
    for m in rank_metrics:
        row = [("pass" if mono[m][f]["pass"] else "FAIL") + (" (r)" if mono[m][f]["robust"] else " (R!)") for f in fams]
        allp = all(v["pass"] for v in mono[m].values()) and never[m]
        lines.append(f"| {m} | " + " | ".join(row) + f" | {'yes' if never[m] else 'NO'} | {agree[m]:.2f} | {'PASS' if allp else 'fail'} |")
    lines += ["", "## Spearman rank correlation over the generated sets (signs aligned: + = agree)", "",
              "| | " + " | ".join(rank_metrics) + " |", "|---|" + "---|" * len(rank_metrics)]
    for i, m in enumerate(rank_metrics):
        lines.append(f"| {m} | " + " | ".join(f"{spearman[i, j]:.2f}" for j in range(len(rank_metrics))) + " |")
    key_m = ["digits", "digits-native", "fd_px8", "offsub", "fd_px16", "fd_pca8w", "kid_px8", "fd_conv", "kid_clf"]
    lines += ["", "## Paired comparisons: A − B (paired bootstrap std; P(A better) over replicates)", "",
              "| comparison | " + " | ".join(key_m) + " |", "|---|" + "---|" * len(key_m)]
    for k, v in comparisons.items():
        lines.append(f"| {k} | " + " | ".join(f"{v[m]['diff']:+.3g} ± {v[m]['std']:.2g} (P={v[m]['p_a_better']:.2f})" for m in key_m) + " |")
    lines += resolution_lines
    lines += ["", f"Total wall time: {wall_s:.0f} s (sampling: {sum(r['sample_s'] for r in results.values() if r.get('sampled')):.0f} s of it).", "",
              "## Metric definitions", ""] + [f"- **{k}**: {d}" for k, (d, _) in METRICS.items()]
    lines.append("- **faint_share**: share of faint pixels (1..39) x100 (the train split's value is in results.json)")
    return "\n".join(lines) + "\n"


def build_sets(a: argparse.Namespace, suite: Suite, cache: Path) -> dict[str, dict]:
    """Every panel set: the real held-out digits, the generated sets (sampled or loaded from `cache`) and
    uncached 50 steps with pixel noise or blur."""
    sets = {"real_test": {"images": suite.test, "labels": suite.test_labels, "info": {"macs": 0.0, "sample_s": 0.0, "cached": True}}}
    for spec in generated_specs():
        imgs, labels, info = sample_set(spec, a.n, a.seed, cache)
        print(f"sampled {spec['name']:<14} {info['sample_s']:6.1f}s{' (cached)' if info['cached'] else ''}", flush=True)
        sets[spec["name"]] = {"images": imgs, "labels": labels, "info": info}
    base = sets["nocache50"]
    derived = {"cached": True, "macs": base["info"]["macs"], "sample_s": base["info"]["sample_s"]}
    for s in NOISE:
        sets[f"noise{s}"] = {"images": add_noise(base["images"], s, a.seed + s), "labels": base["labels"], "info": derived}
    for s in BLUR:
        sets[f"blur{s}"] = {"images": blur(base["images"], s), "labels": base["labels"], "info": derived}
    return sets


def score_sets(suite: Suite, sets: dict[str, dict]) -> dict[str, dict]:
    base = sets["nocache50"]
    suite.uncached = {"images": base["images"], "clf": suite.features(base["images"])["clf"]}
    results = {}
    for name in ORDER:
        s, info = sets[name], sets[name]["info"]
        metrics = suite.evaluate(s["images"], s["labels"], paired=name != "real_test")
        for m in metrics.values():
            m["std"] = float(np.std(m["boot"], ddof=1)) if len(m["boot"]) > 1 else None
        results[name] = {"n": len(s["images"]), "speedup": base["info"]["macs"] / info["macs"] if info["macs"] else None,
                         "sample_s": info["sample_s"], "sampled": not info["cached"], "metrics": metrics}
        print(f"scored {name:<14} digits {metrics['digits']['value']:.3f}  digits-native {metrics['digits-native']['value']:.2f}  "
              f"offsub {metrics['offsub']['value']:.2f}", flush=True)
    return results


def analyse(results: dict) -> dict:
    """Monotonicity, order agreement, noise never helping, rank correlations and the paired comparisons."""
    gen = ORDER[1:]
    rank_metrics = [m for m in METRICS if all(m in results[s]["metrics"] and results[s]["metrics"][m]["boot"] for s in gen)]
    vals = np.array([[sign(m) * results[s]["metrics"][m]["value"] for m in rank_metrics] for s in gen])
    return {"rank_metrics": rank_metrics,
            "monotonicity": {m: monotone(results, m) for m in rank_metrics},
            "order_agreement": {m: order_agreement(results, m) for m in rank_metrics},
            "noise_never_helps": {m: all(sign(m) * (results[f"noise{s}"]["metrics"][m]["value"] - results["nocache50"]["metrics"][m]["value"]) > 0
                                         for s in NOISE) for m in rank_metrics},
            "spearman": stats.spearmanr(vals).statistic,
            "kendall": np.array([[stats.kendalltau(vals[:, i], vals[:, j]).statistic for j in range(len(rank_metrics))]
                                 for i in range(len(rank_metrics))]),
            "comparisons": {f"{x} vs {y}": {m: paired_compare(results, m, x, y) for m in rank_metrics} for x, y in COMPARISONS}}


def write(a: argparse.Namespace, out: Path, results: dict, an: dict, res: dict, train_faint: float, wall_s: float) -> None:
    """results.md, draws.npz (every bootstrap replicate of the full-size sets) and results.json."""
    md = markdown(a, results, an["monotonicity"], an["order_agreement"], an["noise_never_helps"], an["spearman"], an["rank_metrics"],
                  an["comparisons"], resolution_md(res, FAMILIES), wall_s)
    print(md)
    (out / "results.md").write_text(md)
    np.savez_compressed(out / "draws.npz", **{f"{s}/{m}": np.array(v["boot"]) for s, r in results.items() for m, v in r["metrics"].items() if v["boot"]})
    summary = {s: {**{k: v for k, v in r.items() if k != "metrics"}, "metrics": {m: {k: v for k, v in mv.items() if k != "boot"} for m, mv in r["metrics"].items()}}
               for s, r in results.items()}
    payload = {"n": a.n, "seed": a.seed, "boot": a.boot, "threads": a.threads, "order": ORDER, "families": FAMILIES,
               "metrics_doc": {k: v[0] for k, v in METRICS.items()}, "results": summary,
               **{k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in an.items()},
               "train_faint_share": 100 * train_faint, "resolution": res, "wall_s": wall_s}
    (out / "results.json").write_text(json.dumps(payload, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="images per generated set")
    p.add_argument("--seed", type=int, default=0, help="noise seed (same for every generated set) and bootstrap seed")
    p.add_argument("--out", default="bench/results/metric-validation", help="output folder")
    p.add_argument("--boot", type=int, default=100, help="bootstrap resamples")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.n < max(RESOLUTION_SIZES):
        p.error(f"--n {a.n}: the resolution table cuts every set to n = {RESOLUTION_SIZES}; use --n {max(RESOLUTION_SIZES)} or more")
    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    out = Path(a.out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    suite = Suite(a.boot, a.seed)
    sets = build_sets(a, suite, out / "cache")
    save_comparison(sets, GRID, out / "grid.png")
    save_comparison(sets, RESOLUTION_GRID, out / "grid-resolution.png")
    results = score_sets(suite, sets)
    res = resolution(suite, sets, FAMILIES)
    write(a, out, results, analyse(results), res, suite.train_faint, time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
