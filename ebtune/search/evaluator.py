"""Trial evaluation: a schedule → N images from fixed noise and labels → the metrics a search ranks.

Every evaluation in a search (baselines and trials) samples the same `metric.n_samples` images:
class-balanced labels, and batch b of `batch_size` images drawn from seed `seed + 2b` (initial
noise) and `seed + 2b + 1` (the sampler's step noise), so two schedules differ only by the cache.
A stochastic sampler (ddpm, ddim with eta > 0) at a step count other than the search's K would use
that generator differently from the K-step run; with `metric.couple_noise` (the default) its step
noise is instead coupled to the K-step run's draws of the same batch (`ebtune.sampling.noise`), so a
fewer-step baseline or trial and a K-step schedule share their step noise as well, and the paired
error of their difference measures the schedules rather than unrelated noise.
The batches double as the latency runs: each batch is timed (synchronised on GPU, decoding
included), the first `latency_warmup` batches and a partial last batch are not counted, and
`latency_s` is the median of the rest.

Latency is paired: before each of a trial's first timed batches, the same batch (noise, labels, step
noise) is sampled uncached at the search's step count and timed, not scored. `latency_speedup` is
the median over those pairs of reference seconds / trial seconds. The two runs of a pair are
adjacent in time in one process, so whatever slows the machine then (a concurrent trial, another
program) slows both and cancels in their ratio; the median of per-pair ratios keeps that
cancellation pair by pair, where a ratio of two medians could divide a slow moment by a quiet one.
How many pairs: `metric.latency_pairs: N` exactly N (0 divides the reference's own latency, measured
once when it ran, `Reference.latency_s`, as before pairing); `auto` (the default), when latency is
ranked or constrained, at least `LATENCY_PAIRS` and then more until the median's standard error is
within `LATENCY_REL_ERROR` of it (or the timed batches run out), and one pair when latency is only
reported. Reported metrics (see `pareto.DIRECTIONS`):

- the quality metric (`model.fid`, an `ebtune.metrics.base.Metric`) under its own name, e.g. `fid`
  (Inception FID) or `digits-native` (dit-tiny), and `<name>_std`, its standard error from
  `metric.bootstrap` resamples of the images (dominance is judged beyond it);
- accuracy: share of images the digits classifier assigns to their label (digits models only);
- macs: exact MACs per image (`LoadedModel.macs`, counted by the model family); speedup: no-cache MACs at the search's
  step count over `macs` (MAC-ideal); latency_s and latency_speedup (no-cache latency over it,
  paired as above);
- distance: RMS difference of the final latents to the uncached run from the same noise;
- quality_proxy (and its error): the quality metric on the first `metric.n_proxy` images; with the same
  metric on the first 2, 4, ... × n_proxy images below n_samples these are the rungs of successive
  halving over images: at each rung a gate may stop a hopeless trial (see `evaluate`); images: how
  many images the evaluation sampled (its cost is images × macs).
"""
from __future__ import annotations

import math
import statistics
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ebtune.cache.engine import CachedModel
from ebtune.core.schedule import Schedule, no_cache
from ebtune.errors import ConfigError
from ebtune.metrics.base import Metric, draws_std
from ebtune.run.factory import model_spec, sampler_from
from ebtune.run.generate import class_balanced_labels, generate
from ebtune.run.loading import load_model
from ebtune.sampling.samplers import Sampler
from ebtune.schedules import ScheduleContext
from ebtune.search.space import SearchSpace
from ebtune.search.pareto import objective_names, std_key

# Grids logged per trial stay small: a few images, each at most this many pixels wide.
GRID_IMAGES = 20
GRID_MAX_SIDE = 64
# `metric.latency_pairs: auto` when the search ranks or constrains by latency: at least this many
# uncached timing-only batches per trial (each costs one no-cache batch; a trial pruned at the first
# fidelity pays only those before its gate) ...
LATENCY_PAIRS = 4
# ... then one more pair per timed batch until the median ratio's standard error (robust: from the
# pairs' median absolute deviation) is at most this share of it. On the shared 2-core CPU, four fixed
# pairs let a concurrent trial miss a lone run's latency_speedup by up to 8-13 %; stopping at 2.5 %
# kept ten of them within 3.7 % for 5.4 pairs on average (bench/paired_latency.py).
LATENCY_REL_ERROR = 0.025
# ... and when latency is only reported (MACs ranked, the CPU default): one pair still cancels a
# concurrent trial's or a busy machine's slowdown, for a quarter of the timing cost.
LATENCY_PAIRS_REPORTED = 1


def median_rel_error(ratios: list[float]) -> float:
    """Standard error of the median of `ratios` over the median: 1.2533 · σ / √n, σ = 1.4826 · MAD
    (the normal-consistent spread a single outlying pair does not inflate); inf below two ratios."""
    if len(ratios) < 2:
        return math.inf
    med = statistics.median(ratios)
    mad = statistics.median(abs(r - med) for r in ratios)
    return 1.2533 * 1.4826 * mad / math.sqrt(len(ratios)) / med


class TrialError(RuntimeError):
    """A trial whose output cannot be scored (NaN or infinite samples or metrics)."""


class TrialPruned(RuntimeError):
    """A rung of successive halving showed that a trial cannot reach the front; `metrics` are that rung's."""

    def __init__(self, metrics: dict[str, float], rungs: tuple["Rung", ...] = ()):
        super().__init__(f"pruned after {int(metrics['images'])} images: quality_proxy {metrics['quality_proxy']:.4g}")
        self.metrics, self.rungs = metrics, rungs


# A rung's metrics (quality_proxy, its error, macs, images sampled, proxy_images: the rung) and its bootstrap
# draws → whether the evaluation goes on.
Gate = Callable[[dict[str, float], list[float]], bool]


@dataclass(frozen=True)
class Rung:
    """The quality metric on the first `images` images of an evaluation and its bootstrap draws (the
    same resampled indices for every evaluation of a search with this many images: paired)."""

    images: int
    value: float
    draws: tuple[float, ...]

    def to_attr(self) -> dict[str, Any]:
        return {"images": self.images, "value": self.value, "draws": list(self.draws)}

    @classmethod
    def from_attr(cls, attr: Mapping[str, Any]) -> "Rung":
        return cls(int(attr["images"]), float(attr["value"]), tuple(float(d) for d in attr["draws"]))


@dataclass(frozen=True)
class Reference:
    """The uncached run every trial is compared with: final latents (N, C, H, W) and its latency."""

    latents: np.ndarray
    latency_s: float


@dataclass(frozen=True)
class Outcome:
    """One evaluation: its metrics, the final latents and a few images for the trial's grid."""

    metrics: dict[str, float]
    latents: np.ndarray
    grid: np.ndarray  # uint8 n×h×w×c, n ≤ GRID_IMAGES
    rungs: tuple[Rung, ...] = ()  # the quality metric on the first n_proxy, 2 n_proxy, ... images
    # the quality metric on the `metric.bootstrap` resamples of all the images: the same indices for every
    # evaluation of a search, so two outcomes' draws give the paired error of their difference
    # (`inference.paired_difference`)
    quality_draws: tuple[float, ...] = ()
    pruned: bool = False  # stopped at a rung: `metrics` are that rung's, latents and grid are empty


def latency_batch(n_samples: int, batch_size: int, warmup: int) -> int:
    """The batch size used for sampling and timing: `batch_size`, lowered for small `n_samples` so that
    at least one full batch follows the `warmup` ones.

    Raises:
        ValueError: n_samples cannot hold warm-up batches plus one timed batch.
    """
    if batch_size < 1 or warmup < 0:
        raise ValueError(f"metric.batch_size must be >= 1 and metric.latency_warmup >= 0, got {batch_size} and {warmup}")
    if n_samples < warmup + 1:
        raise ValueError(f"metric.n_samples={n_samples} leaves no timed batch after {warmup} warm-up batch(es); "
                         f"raise metric.n_samples or lower metric.latency_warmup")
    return min(batch_size, n_samples // (warmup + 1))


def latency_ranked(search: Mapping[str, Any] | None, device_type: str) -> bool:
    """Whether a search ranks or constrains by latency (`search.objectives`, `search.constraints`;
    objectives `auto` rank by latency on CUDA). No search config (confirm, bench): True."""
    if not search:
        return True
    names = objective_names(search["objectives"], device_type)
    return any(str(n).startswith("latency") for n in names) or "latency" in " ".join(map(str, search["constraints"]))


def latency_pairs(metric: Mapping[str, Any], ranked: bool = True) -> tuple[int, int | None]:
    """`metric.latency_pairs` as (fewest, most) uncached reference batches timed per trial; most None =
    as many as the trial has timed batches, pairing until `LATENCY_REL_ERROR` is reached. `auto` (the
    default) = (`LATENCY_PAIRS`, None) when the search ranks by latency (`ranked`), else one pair; a
    number N = exactly N.

    Raises:
        ConfigError: neither `auto` nor a whole number >= 0.
    """
    value = metric["latency_pairs"]
    if value == "auto":
        return (LATENCY_PAIRS, None) if ranked else (LATENCY_PAIRS_REPORTED, LATENCY_PAIRS_REPORTED)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"metric.latency_pairs must be auto or a whole number >= 0 (0 = unpaired latency), got {value!r}")
    return value, value


class Evaluator:
    """The model, sampler, labels and quality metric of one search, loaded once per process.

    Args:
        cfg: the resolved search config (plain dict): model, sampler, steps, cfg_scale, seed, metric.
        device: where to sample; a metric's feature network picks CUDA when it is visible.
    """

    def __init__(self, cfg: Mapping[str, Any], device: torch.device | str):
        from ebtune.metrics.registry import make_metric

        self.spec = model_spec(cfg["model"])
        self.device = torch.device(device)
        self.loaded = load_model(self.spec, self.device)
        self.cfg = cfg
        self.sampler = sampler_from(cfg, self.spec)
        metric = cfg["metric"]
        self.n_samples = int(metric["n_samples"])
        self.warmup = int(metric["latency_warmup"])
        self.batch = latency_batch(self.n_samples, int(metric["batch_size"]), self.warmup)
        fewest, most = latency_pairs(metric, latency_ranked(cfg.get("search"), self.device.type))
        self.pairs = min(fewest, self.timed_batches)  # always paired
        self.max_pairs = min(self.timed_batches if most is None else most, self.timed_batches)
        self.seed = int(cfg["seed"])
        self.bootstrap = int(metric["bootstrap"])
        self.couple_noise = bool(metric["couple_noise"])
        self.n_proxy = min(int(metric["n_proxy"]), self.n_samples)
        self.labels = class_balanced_labels(self.n_samples, self.loaded.config.num_classes)
        self.metric: Metric = make_metric(self.spec.fid, self.spec.fid_reference or None)
        self.no_cache = no_cache(self.sampler.steps, self.loaded.config.depth)
        self.ref_macs = self.macs(self.no_cache, self.sampler)

    @property
    def ctx(self) -> ScheduleContext:
        """The context schedules of this search are built in (steps, depth, step times)."""
        return ScheduleContext(self.sampler.steps, self.loaded.config.depth, self.sampler.times)

    @property
    def timed_batches(self) -> int:
        return self.n_samples // self.batch - self.warmup

    def sampler_at(self, steps: int, name: str | None = None) -> Sampler:
        """The search's sampler (or the sampler `name`, with its defaults) at `steps` steps, with the
        search's guidance: the fewer-steps baselines and the trials of a space that searches them."""
        if name is None or name == self.cfg["sampler"]["name"]:
            return self.sampler if steps == self.sampler.steps else sampler_from(self.cfg, self.spec, steps)
        return sampler_from({**self.cfg, "sampler": {"name": name}}, self.spec, steps)

    def coupled_steps(self, sampler: Sampler) -> int | None:
        """The step count `sampler`'s step noise is coupled to: the search's K where `metric.couple_noise`
        is on and `sampler` is stochastic at another step count; None (plain draws) otherwise."""
        if self.couple_noise and sampler.step.stochastic and sampler.steps != self.sampler.steps:
            return self.sampler.steps
        return None

    def point(self, space: SearchSpace, params: Mapping[str, Any]) -> tuple[Schedule, Sampler]:
        """The schedule and sampler of one space point: the search's sampler and steps unless the
        space searches them (`SearchSpace.sampling`), the schedule built for that step count."""
        name, steps = space.sampling(params)
        sampler = self.sampler_at(steps or self.sampler.steps, name)
        ctx = self.ctx if sampler is self.sampler else ScheduleContext(sampler.steps, self.loaded.config.depth, sampler.times)
        return space.to_schedule(params, ctx), sampler

    def macs(self, schedule: Schedule, sampler: Sampler) -> float:
        """MACs per image of a whole sampling run under `schedule`."""
        return float(self.loaded.macs(schedule, batch=1, cfg=sampler.guidance.active))

    def evaluate(self, schedule: Schedule, reference: Reference | None, sampler: Sampler | None = None,
                 gate: Gate | None = None) -> Outcome:
        """Sample, time and score `schedule` (see the module docstring for the metrics).

        Args:
            reference: the uncached run; None while evaluating that run itself (distance 0, latency
                speedup 1).
            sampler: defaults to the search's; another step count for the fewer-steps baselines.
            gate: successive halving over images: at each rung (`rung_sizes`: the first
                `metric.n_proxy` images, then twice as many, ... below n_samples) the quality on
                those images (quality_proxy ± error) is computed and, if `gate` says so, the evaluation
                stops there. Every rung's images are the first images of the full set, so going on
                costs only the rest.

        Raises:
            TrialError: non-finite samples or metrics. TrialPruned: the gate stopped the evaluation.
        """
        sampler = sampler or self.sampler
        macs = self.macs(schedule, sampler)
        fewest, most = (0, 0) if reference is None else (self.pairs, self.max_pairs)
        images, latents, seconds, ratios, rungs, proxy = [], [], [], [], [], {}
        observe = getattr(gate, "observe", None) if self.n_proxy else None  # a gate that reads the run (gap_gate)
        with ExitStack() as attached:
            # Attached once for every batch, except around a paired reference run: a model carries one cache at a time.
            cache = attached.enter_context(CachedModel(self.loaded.model, schedule))
            watch = observe(cache, sampler) if observe else None
            for b, lo in enumerate(range(0, self.n_samples, self.batch)):
                labels, seed = self.labels[lo:lo + self.batch], self.seed + 2 * b
                paired = b >= self.warmup and len(labels) == self.batch and len(ratios) < most and (
                    len(ratios) < fewest or median_rel_error(ratios) > LATENCY_REL_ERROR)
                if paired:
                    attached.close()
                    reference_s = self.reference_seconds(labels, seed)
                    cache = attached.enter_context(CachedModel(self.loaded.model, schedule))
                # The gap gate watches this trial's first-rung batches only, never the uncached reference runs.
                with watch if watch is not None and not rungs else nullcontext():
                    out = generate(self.loaded, sampler, cache, labels, seed, self.batch, self.coupled_steps(sampler))
                images.append(out.images)
                latents.append(out.latents.float().cpu())
                if b >= self.warmup and len(out.labels) == self.batch:
                    seconds.append(out.seconds)
                if paired:
                    ratios.append(reference_s / out.seconds)
                done = lo + len(out.labels)
                for size in (s for s in self.rung_sizes if s <= done and s > (rungs[-1].images if rungs else 0)):
                    rungs.append(self._rung(np.concatenate(images), size))
                    stage = {"quality_proxy": rungs[-1].value, std_key("quality_proxy"): draws_std(rungs[-1].draws),
                             "macs": macs, "images": float(done), "proxy_images": float(size)}
                    proxy = proxy or stage  # the first rung's stay in the metrics of a finished evaluation
                    if gate is not None and done < self.n_samples and not gate(stage, list(rungs[-1].draws)):
                        raise TrialPruned(stage, tuple(rungs))
        return self._outcome(np.concatenate(images), torch.cat(latents), macs, seconds, ratios, reference, proxy,
                             tuple(rungs))

    @property
    def rung_sizes(self) -> tuple[int, ...]:
        """Image counts judged before the full set: n_proxy, 2 n_proxy, 4 n_proxy, ... below n_samples
        (successive halving with a growth factor of 2; none when `metric.n_proxy` is 0)."""
        sizes, size = [], self.n_proxy
        while 0 < size < self.n_samples:
            sizes.append(size)
            size *= 2
        return tuple(sizes)

    def _rung(self, images: np.ndarray, size: int) -> Rung:
        value, draws = self.metric.score_draws(images[:size], self.bootstrap, self.seed)
        return Rung(size, float(value), tuple(float(d) for d in draws))

    def _outcome(self, imgs: np.ndarray, final: torch.Tensor, macs: float, seconds: list[float], ratios: list[float],
                 reference: Reference | None, proxy: dict[str, float], rungs: tuple[Rung, ...]) -> Outcome:
        """Score a finished evaluation: quality with its draws, cost, latency and distance.

        Raises:
            TrialError: non-finite samples or metrics.
        """
        if not torch.isfinite(final).all():
            raise TrialError("the samples contain NaN or infinite values; this schedule diverges")
        latency = statistics.median(seconds)
        quality, draws = self.metric.score_draws(imgs, self.bootstrap, self.seed)
        metrics = {
            **proxy,
            "images": float(len(imgs)),
            self.metric.name: quality,
            std_key(self.metric.name): draws_std(draws),
            "macs": macs,
            "speedup": self.ref_macs / macs,
            "latency_s": latency,
            "latency_speedup": latency_speedup(reference, latency, ratios),
            "distance": 0.0 if reference is None else float(np.sqrt(np.mean((final.numpy() - reference.latents) ** 2))),
        }
        if self.spec.decoder == "digits":  # the digits classifier reads what any digits model draws
            from ebtune.metrics.fid import classifier_accuracy

            metrics["accuracy"] = classifier_accuracy(imgs, self.labels.numpy())
        bad = [k for k, v in metrics.items() if not math.isfinite(v) and not k.endswith("_std")]
        if bad:
            raise TrialError(f"metric(s) {', '.join(bad)} are not finite; the samples are degenerate")
        return Outcome(metrics, final.numpy(), _small(imgs[:GRID_IMAGES]), rungs, tuple(float(d) for d in draws))

    def reference_seconds(self, labels: torch.Tensor, seed: int) -> float:
        """Wall time of sampling `labels` from `seed` uncached with the search's sampler, as `evaluate`
        times a batch (decoding included); timing only, nothing is scored."""
        with CachedModel(self.loaded.model, self.no_cache) as cache:
            return generate(self.loaded, self.sampler, cache, labels, seed, self.batch).seconds

    def provenance(self) -> dict[str, Any]:
        """How the metrics were measured, for schedule files and the MLflow parent run."""
        device = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
        return {"evaluator": self.spec.fid, "metric": self.metric.name, "n_samples": self.n_samples, "seed": self.seed, "bootstrap": self.bootstrap,
                "labels": "class-balanced", "latency": {"batch_size": self.batch, "warmup_batches": self.warmup,
                                                        "timed_batches": self.timed_batches,
                                                        "paired_batches": [self.pairs, self.max_pairs],
                                                        "device": device}}


def latency_speedup(reference: Reference | None, latency_s: float, ratios: list[float]) -> float:
    """No-cache over cached latency: the median of the paired ratios (reference seconds / trial seconds of
    the same batch, run back to back); without pairs the reference's own latency over `latency_s`; 1 for
    the reference itself (`reference` None)."""
    if reference is None:
        return 1.0
    return statistics.median(ratios) if ratios else reference.latency_s / latency_s


def _small(images: np.ndarray) -> np.ndarray:
    """Every k-th pixel so that no side exceeds GRID_MAX_SIDE (a preview, not a measurement)."""
    k = max(1, -(-images.shape[1] // GRID_MAX_SIDE))
    return np.ascontiguousarray(images[:, ::k, ::k])
