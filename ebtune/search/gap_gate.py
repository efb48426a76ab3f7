"""Gap-based pruning: the exposure-bias gap of a trial's proxy images as an early signal.

While the evaluator samples a trial's first `metric.n_proxy` images, `GapGate.observe` records
‖ε̂‖ of each image at each step i: the per-image RMS of the ε the sampler uses (guided, times the
schedule's factor b_i), as `ebtune.diagnostics.exposure.gap_profile` measures it. With ‖ε‖_i, the
same statistic for the model on forward-noised real data at step i's timestep (`real_reference`,
once per search), the trial's gap profile is G_i = mean_n ‖ε̂‖_{n,i} − ‖ε‖_i and its gap is
S = mean_i |G_i|: how far the run's ε is from the training distribution's, on either side.

Which ε, and why not "smaller gap = better" (docs/diagnostics.md, dit-tiny, 50 steps, 128 images):
caching widens the gap (FORA(3): S 0.023 → 0.042) and ε scaling narrows the scaled gap. The model's
*unscaled* prediction at x̂_t moves the other way under scaling (b(t) on no cache: 0.023 → 0.042)
while FID improves, so a rule on it would stop the ε-scaled trials that are best; the scaled gap
orders ε forms on one mask mostly right, but not all the way (ε × 0.95 on FORA(2) had the best FID
and a larger gap than b(t)). So the gap never decides alone:

The rule (`gap_beaten`): a trial is stopped after its proxy images when an evaluated trial at the
same step count that costs no more has a smaller gap beyond NOISE_Z paired standard errors *and* a
quality_proxy no worse than the trial's. Noise: every evaluation resamples its proxy images with the
same `metric.bootstrap` index sets (seeded by the search seed), so the error of a difference is the
spread of the paired draws' differences, as for quality_proxy.

Only models with real data here (`ebtune.diagnostics.reference.real_latents`: dit-tiny) have ‖ε‖_i;
`check_gap_prune` refuses `metric.gap_prune=true` for the others before anything is written.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ebtune.errors import ConfigError
from ebtune.search.halving import sign_of
from ebtune.search.pareto import NOISE_Z

GAP_KEY = "gap"  # the trial user attribute holding its gap record
REAL_IMAGES = 64  # real images behind ‖ε‖_i: one reference per search, common to every trial


@dataclass(frozen=True)
class GapRecord:
    """One evaluation's gap on its proxy images: S, its paired bootstrap draws, and what the rule
    compares besides (cost, proxy quality, step count)."""

    gap: float
    draws: tuple[float, ...]
    macs: float
    quality_proxy: float
    steps: int

    def to_attr(self) -> dict[str, Any]:
        return {"gap": self.gap, "draws": list(self.draws), "steps": self.steps}

    @classmethod
    def from_attr(cls, attr: Mapping[str, Any], metrics: Mapping[str, float]) -> "GapRecord":
        return cls(float(attr["gap"]), tuple(attr["draws"]), float(metrics["macs"]), float(metrics["quality_proxy"]),
                   int(attr["steps"]))


def gap_enabled(metric: Any) -> bool:
    """`metric.gap_prune` (of `MetricSettings`); it needs the first fidelity (`metric.n_proxy` > 0)."""
    return bool(metric.gap_prune) and int(metric.n_proxy) > 0


def check_gap_prune(metric: Mapping[str, Any], decoder: str) -> None:
    """Raise `ConfigError` for `metric.gap_prune=true` where it cannot run.

    Raises:
        ConfigError: the model has no real data for ‖ε‖_i, or the first fidelity is off.
    """
    if not metric["gap_prune"]:
        return
    if decoder != "digits":
        raise ConfigError("metric.gap_prune=true needs real data for the training-distribution ‖ε‖, which only "
                          "dit-tiny has here; set metric.gap_prune=false for this model")
    if int(metric["n_proxy"]) <= 0:
        raise ConfigError("metric.gap_prune=true judges the proxy images; set metric.n_proxy > 0 or metric.gap_prune=false")


def gap_statistic(norms: np.ndarray, reference: np.ndarray) -> float:
    """S = mean_i |mean_n norms[n, i] − reference[i]| for per-image norms (N, K) and ‖ε‖_i (K,)."""
    return float(np.mean(np.abs(norms.mean(axis=0) - reference)))


def gap_draws(norms: np.ndarray, reference: np.ndarray, bootstrap: int, seed: int) -> tuple[float, ...]:
    """S on `bootstrap` resamples of the N images, the same index sets for every evaluation with
    this N and seed (paired draws)."""
    rng = np.random.default_rng(seed)
    n = len(norms)
    return tuple(gap_statistic(norms[rng.integers(0, n, n)], reference) for _ in range(bootstrap))


def gap_beaten(mine: GapRecord, known: Sequence[GapRecord], z: float = NOISE_Z, sign: float = 1.0) -> bool:
    """True when some known point at the same step count, with macs ≤ mine and quality_proxy ≤ mine, has
    a gap smaller than mine by more than `z` paired standard errors (see the module docstring)."""
    theirs_ok = [k for k in known if k.steps == mine.steps and len(k.draws) == len(mine.draws) > 1]
    me = np.asarray(mine.draws)
    for k in theirs_ok:
        if k.macs <= mine.macs and sign * k.quality_proxy <= sign * mine.quality_proxy:  # sign: the metric's direction
            spread = float(np.std(np.asarray(k.draws) - me, ddof=1))
            if k.gap - mine.gap < -z * spread:
                return True
    return False


@functools.lru_cache(maxsize=2)
def real_reference(evaluator: Any, images: int = REAL_IMAGES) -> np.ndarray:
    """‖ε‖_i of the evaluator's model on `images` forward-noised real images (class-balanced, drawn
    from the search seed), computed once per evaluator: (K,)."""
    from ebtune.diagnostics.exposure import real_eps_norms
    from ebtune.diagnostics.reference import real_latents
    from ebtune.run.generate import class_balanced_labels

    labels = class_balanced_labels(images, evaluator.loaded.config.num_classes)
    real = real_latents(evaluator.loaded, labels, evaluator.seed)
    if real is None:
        raise ConfigError(f"model {evaluator.spec.name!r} has no real data for the gap; set metric.gap_prune=false")
    x0, y0 = real
    return real_eps_norms(evaluator.sampler, evaluator.loaded.model, x0, y0, evaluator.seed)


def known_records(trials: Sequence[Any]) -> list[GapRecord]:
    """Gap records of the completed trials that carry one (baselines are evaluated without a gate,
    so they carry none)."""
    return [GapRecord.from_attr(t.user_attrs[GAP_KEY], t.user_attrs["metrics"]) for t in trials
            if GAP_KEY in t.user_attrs and "quality_proxy" in t.user_attrs.get("metrics", {})]


class GapGate:
    """The multi-fidelity gate with the gap rule added: a `Gate` that also watches the proxy images.

    The evaluator enters `observe(model, sampler)` around its sampling; when the proxy images exist
    it calls the gate, which computes this trial's gap record (kept as `record`, and `eps_gap` in
    the proxy metrics), then keeps the trial only if both the FID rule and `gap_beaten` do.

    Built in the driver and, under `launcher=ray`, pickled to the worker that runs the trial: until
    `observe` every attribute is a plain value (give a picklable `fid_keep`, e.g. `ProxyRule`). The
    record it computes goes on the trial through `ebtune.search.job.gate_attrs`.

    Args:
        fid_keep: the FID-proxy rule (`ebtune.search.halving.ProxyRule`).
        known: gap records of the evaluated points. reference: ‖ε‖_i, (K,).
        channels: the latent channel count; n_proxy, bootstrap, seed: the proxy size and the paired resampling;
        sign: +1 for a lower-is-better quality metric, -1 for a higher-is-better one.
    """

    def __init__(self, fid_keep: Callable[[dict[str, float], list[float]], bool], known: Sequence[GapRecord],
                 reference: np.ndarray, channels: int, n_proxy: int, bootstrap: int, seed: int, sign: float = 1.0):
        self.fid_keep, self.known, self.reference, self.channels = fid_keep, list(known), reference, channels
        self.sign = sign  # the quality metric's direction (`halving.sign_of`)
        self.n_proxy, self.bootstrap, self.seed = n_proxy, bootstrap, seed
        self.record: GapRecord | None = None
        self._recorder: Any = None

    @classmethod
    def of_search(cls, fid_keep: Callable[[dict[str, float], list[float]], bool], study: Any, evaluator: Any) -> "GapGate":
        """The gate for the next trial of `study` (an Optuna study), measured like `evaluator`'s."""
        from optuna.trial import TrialState

        known = known_records(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return cls(fid_keep, known, real_reference(evaluator), evaluator.loaded.config.in_channels,
                   evaluator.n_proxy, evaluator.bootstrap, evaluator.seed, sign_of(evaluator.metric.direction))

    def observe(self, cache: Any, sampler: Any) -> Any:
        """A context manager recording ‖ε̂‖ per image and step while the evaluator samples under the
        attached `cache` (a `CachedModel`: its model and schedule's ε factors)."""
        from ebtune.diagnostics.recording import EpsNormRecorder

        self._recorder = EpsNormRecorder(cache.model, sampler, self.channels, cache.schedule.eps_scale)
        return self._recorder

    def __call__(self, proxy: dict[str, float], draws: list[float]) -> bool:
        if self._recorder is None:
            raise RuntimeError("GapGate called before observe(); the evaluator must watch the proxy images")
        if self.record is None:  # the first rung: the gap is judged once, on the first n_proxy images
            norms = self._recorder.per_image()[: self.n_proxy]
            self._recorder.__exit__()  # the gap needs only the proxy images: the rest is sampled unobserved
            self.record = GapRecord(gap_statistic(norms, self.reference),
                                    gap_draws(norms, self.reference, self.bootstrap, self.seed),
                                    float(proxy["macs"]), float(proxy["quality_proxy"]), norms.shape[1])
        proxy["eps_gap"] = self.record.gap
        keep = self.fid_keep(proxy, draws)
        return keep and not gap_beaten(self.record, self.known, sign=self.sign)
