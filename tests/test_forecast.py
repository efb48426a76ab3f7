"""Forecasting skipped branch outputs: every predictor against an independent reference built from
the DiT block's own parts, order 0 = reuse bit for bit, and the schedule keeps its predictors through
files, retargeting, MACs, memory, calibration's `what_if`, the fast path and `ebtune.apply`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import ebtune
from ebtune import cached, make_sampler
from ebtune.bench.memory import history_bytes
from ebtune.cache.fast import FastPath
from ebtune.cache.graphs import CudaGraphs
from ebtune.core.dit import DiT, DiTConfig
from ebtune.core.macs import forward_macs, sampling_macs
from ebtune.core.predictors import PREDICTORS, History
from ebtune.core.schedule import REUSE, PredictorSpec, Schedule
from ebtune.errors import ConfigError
from ebtune.io.schedule_file import ScheduleFileError, load_schedule_file, save_schedule_file
from ebtune.schedules import ScheduleContext, fora, make_schedule
from ebtune.schedules.retarget import retarget_depth, retarget_steps

from tests.test_pipeline import DEPTH as PIPE_DEPTH, _images, pipe  # noqa: F401  (pipe is a fixture)

from .conftest import SMALL, randomised

STEPS = 10
ATTN_STEPS = (0, 1, 3, 4, 7)  # irregular: distances 1, 2, 1, 3
MLP_STEPS = (0, 2, 3, 6, 9)
TINY = DiTConfig(input_size=4, patch_size=2, in_channels=2, hidden_size=16, depth=1, num_heads=2, num_classes=3)


# ---- independent references, float64, written from the definitions (not from ebtune's recursions) ----

def taylorseer_uniform(values: list[np.ndarray], spacing: int, order: int, k: int) -> np.ndarray:
    """TaylorSeer's Eq.: m-th backward difference Δ^m F = Σ_j (−1)^j C(m, j) F_{−j} over computations
    `spacing` apart (latest last in `values`), derivative ≈ Δ^m F / N^m, series Σ_m F^(m) k^m / m!."""
    n = min(order, len(values) - 1)
    latest_first = values[::-1]
    total = np.zeros_like(values[-1])
    for m in range(n + 1):
        delta = sum((-1) ** j * math.comb(m, j) * latest_first[j] for j in range(m + 1))
        total = total + delta / spacing**m * k**m / math.factorial(m)
    return total


def taylor_irregular(steps: list[int], values: list[np.ndarray], order: int, target: int) -> np.ndarray:
    """Divided differences in closed form, f[s_0..s_m] = Σ_i F_i / Π_{l≠i}(s_i − s_l) over the latest m + 1
    computations, as derivative estimates F^(m)(s_0) = m!·f[s_0..s_m] in the Taylor series at s_0."""
    s, f = steps[::-1], values[::-1]
    n = min(order, len(s) - 1)
    k = target - s[0]
    total = np.zeros_like(f[0])
    for m in range(n + 1):
        divided = sum(f[i] / math.prod(s[i] - s[l] for l in range(m + 1) if l != i) for i in range(m + 1))
        total = total + math.factorial(m) * divided * k**m / math.factorial(m)
    return total


def lagrange_polyfit(steps: list[int], values: list[np.ndarray], order: int, target: int) -> np.ndarray:
    """numpy's least-squares polynomial fit of degree n through the latest n + 1 points (exact there)."""
    n = min(order, len(steps) - 1)
    x, y = np.array(steps[-(n + 1):], dtype=np.float64), np.stack(values[-(n + 1):])
    coef = np.polynomial.polynomial.polyfit(x, y.reshape(n + 1, -1), n)
    return np.polynomial.polynomial.polyval(float(target), coef).reshape(y.shape[1:])


REFERENCES = {"taylor": taylor_irregular, "lagrange": lagrange_polyfit}


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def _reference_block_run(block, xs, cs, attn_spec: PredictorSpec, mlp_spec: PredictorSpec) -> list[torch.Tensor]:
    """Each step's block output from the block's parts: computed branches run, skipped ones are the
    reference forecast of the computed ungated outputs, times the current step's gate."""
    history = {"attn": ([], []), "mlp": ([], [])}
    specs, computed = {"attn": attn_spec, "mlp": mlp_spec}, {"attn": ATTN_STEPS, "mlp": MLP_STEPS}
    outs = []

    def branch(name, i, run):
        steps, values = history[name]
        if i in computed[name]:
            out = run().double().numpy()
            steps.append(i), values.append(out)
            return torch.from_numpy(out)
        return torch.from_numpy(REFERENCES[specs[name].name](steps, values, specs[name].order, i))

    for i, (x, c) in enumerate(zip(xs, cs)):
        sa, ca, ga, sm, cm, gm = block.adaLN_modulation(c).chunk(6, dim=1)
        h = x + ga[:, None] * branch("attn", i, lambda: block.attn(_modulate(block.norm1(x), sa, ca)))
        outs.append(h + gm[:, None] * branch("mlp", i, lambda: block.mlp(_modulate(block.norm2(h), sm, cm))))
    return outs


def _irregular(attn_spec: PredictorSpec, mlp_spec: PredictorSpec) -> Schedule:
    return Schedule.from_step_masks([i in ATTN_STEPS for i in range(STEPS)], [i in MLP_STEPS for i in range(STEPS)],
                                    1, attn_predictor=attn_spec, mlp_predictor=mlp_spec)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_block_forecast_matches_the_reference_at_irregular_intervals(order):
    """attn: taylor, mlp: lagrange (and the swap), at computations 0,1,3,4,7 and 0,2,3,6,9 of 10 steps."""
    model = randomised(DiT(TINY)).double()
    block = model.blocks[0]
    gen = torch.Generator().manual_seed(order)
    xs = [torch.randn(2, 4, 16, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
    cs = [torch.randn(2, 16, generator=gen, dtype=torch.float64) for _ in range(STEPS)]
    for attn_name, mlp_name in (("taylor", "lagrange"), ("lagrange", "taylor")):
        specs = PredictorSpec(attn_name, order), PredictorSpec(mlp_name, order)
        with torch.no_grad(), cached(model, _irregular(*specs)) as cache:
            cache.reset()
            got = []
            for i in range(STEPS):
                cache.set_step(i)
                got.append(block(xs[i], cs[i]))
            want = _reference_block_run(block, xs, cs, *specs)
        errors = [float((g - w).abs().max()) for g, w in zip(got, want)]
        print(f"order {order} attn {attn_name} mlp {mlp_name}: max abs error {max(errors):.2e}")
        assert max(errors) <= 1e-6
        with torch.no_grad():
            plain = block(xs[-1], cs[-1])
        assert float((got[-1] - plain).abs().max()) > 1e-3  # step 9 forecasts attention: not vacuous


def test_taylor_is_taylorseers_formula_at_uniform_intervals():
    """With computations N apart, the divided-difference scheme is TaylorSeer's Δ^m/N^m series."""
    gen = torch.Generator().manual_seed(0)
    spacing, outs = 3, [torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(4)]
    for order in (0, 1, 2, 3):
        predictor, history = PREDICTORS.make("taylor", order=order), None
        for j, out in enumerate(outs):
            history = predictor.observe(history, j * spacing, out)
        assert len(history.tensors) == min(order + 1, len(outs))  # memory: O + 1 tensors
        for k in (1, 2):
            want = taylorseer_uniform([o.numpy() for o in outs], spacing, order, k)
            got = predictor.predict(history, (len(outs) - 1) * spacing + k)
            assert float(np.abs(got.numpy() - want).max()) <= 1e-9


@pytest.mark.parametrize("name", PREDICTORS.choices())
def test_every_predictor_is_reuse_at_order_0_and_exact_on_what_its_order_fits(name):
    """Contract suite over the registry: order 0 returns the computed tensor itself; a constant is
    forecast as itself; order >= 1 continues a straight line exactly; at most O + 1 tensors are kept."""
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64)
    steps = (0, 1, 3, 6)
    reuse = PREDICTORS.make(name)
    history = None
    for s in steps:
        out = a + s * b
        history = reuse.observe(history, s, out)
    assert reuse.predict(history, 8) is out
    if name == "reuse":
        with pytest.raises(ValueError, match="reuse has no order"):
            PREDICTORS.make(name, order=1)
        return
    for order in (1, 2, 3):
        predictor, history = PREDICTORS.make(name, order=order), None
        for s in steps:
            history = predictor.observe(history, s, a + s * b)
            assert len(history.tensors) <= predictor.tensors == order + 1
        torch.testing.assert_close(predictor.predict(history, 8), a + 8 * b, rtol=0, atol=1e-12)
        with pytest.raises(RuntimeError, match="reset the cache"):
            predictor.observe(history, 6, a)


def _sample(model, schedule, steps=8):
    sampler = make_sampler("ddim", steps, ebtune.Guidance(2.0, SMALL.num_classes))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return sampler.sample(model, noise, torch.tensor([0, 3]), schedule, torch.Generator().manual_seed(1))


def test_order_0_of_every_predictor_samples_bit_identically_to_reuse(small_dit):
    base = fora(ScheduleContext.linear(8, SMALL.depth), 3)
    reused = _sample(small_dit, base)
    for name in PREDICTORS.choices():
        spec = PredictorSpec(name, 0)
        assert torch.equal(_sample(small_dit, base.with_predictors(spec, spec)), reused)
    forecast = PredictorSpec("taylor", 1)
    assert not torch.allclose(_sample(small_dit, base.with_predictors(forecast, forecast)), reused)


def test_reuse_returns_the_computed_tensor_itself(small_dit):
    """What reuse gives a skipped step is the very tensor the branch computed (as before the seam)."""
    seen = []
    hook = small_dit.blocks[1].attn.register_forward_hook(lambda m, i, o: seen.append(o))
    x, c = torch.randn(2, SMALL.num_patches, SMALL.hidden_size), torch.randn(2, SMALL.hidden_size)
    with cached(small_dit, fora(ScheduleContext.linear(4, SMALL.depth), 2)) as cache:
        cache.reset()
        cache.set_step(0)
        small_dit.blocks[1](x, c)
        cache.set_step(1)
        assert cache.predict(1, "attn") is seen[0]
    hook.remove()


def test_what_if_restores_forecast_histories_exactly(small_dit):
    spec = PredictorSpec("taylor", 2)
    sched = fora(ScheduleContext.linear(8, SMALL.depth), 2).with_predictors(spec, spec)
    x, c = torch.randn(2, SMALL.num_patches, SMALL.hidden_size), torch.randn(2, SMALL.hidden_size)
    with torch.no_grad(), cached(small_dit, sched) as cache:
        cache.reset()
        for step in (0, 1, 2, 3, 4):
            cache.set_step(step)
            small_dit.blocks[0](x + step, c)
        cache.set_step(5)
        before_state, before = cache.state.copy(), cache.predict(0, "attn")
        with cache.what_if((True, True)):
            small_dit.blocks[0](x - 1, c)
            assert cache.state.find((0, "attn")).steps[0] == 5  # the candidate was observed
        after = cache.state.copy()
        assert after.keys() == before_state.keys()
        assert all(after[k] is before_state[k] for k in after)  # the same immutable histories
        assert before_state[(0, "attn")].steps == (4, 2, 0)
        assert torch.equal(cache.predict(0, "attn"), before)


def test_calibration_is_unchanged_by_the_seam(small_dit):
    """Calibration runs `what_if` over reuse: its choice equals one made with a plain dict of tensors
    (the pre-seam engine) because reuse's history is that tensor; spot-check with a policy run."""
    from ebtune.sampling.samplers import StepPolicy

    class Alternate(StepPolicy):
        def decide(self, i, trial):
            if i > 0:
                trial((False, False))  # a what-if that must leave no trace
            return (True, True) if i % 2 == 0 else (False, False)

    sampler = make_sampler("ddim", 8)
    noise, labels = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    got = sampler.sample(small_dit, noise, labels, ebtune.no_cache(8, SMALL.depth), policy=Alternate())
    fora2 = fora(ScheduleContext.linear(8, SMALL.depth), 2)
    assert torch.equal(got, sampler.sample(small_dit, noise, labels, fora2))


MODEL = {"family": "dit", "name": "small", "depth": SMALL.depth}


def _taylor_schedule(steps=12, depth=SMALL.depth) -> Schedule:
    return make_schedule("forecast", ScheduleContext.linear(steps, depth), attn=3, mlp=2, warmup=2,
                         attn_predictor="taylor", mlp_predictor="lagrange", attn_order=2, mlp_order=1)


def test_schedule_file_v2_round_trips_predictors_and_v1_loads_as_reuse(tmp_path):
    sched = _taylor_schedule()
    path = save_schedule_file(tmp_path / "f.json", sched, model=MODEL, sampler={"name": "ddim", "steps": 12},
                              eps_scale={"name": "none"})
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 2
    assert doc["schedule"]["predictors"] == {"attn": {"name": "taylor", "order": 2},
                                             "mlp": {"name": "lagrange", "order": 1}}
    loaded = load_schedule_file(path).schedule
    assert (loaded.attn_predictor, loaded.mlp_predictor) == (PredictorSpec("taylor", 2), PredictorSpec("lagrange", 1))
    assert loaded == sched.renamed(sched.name)
    del doc["schedule"]["predictors"]
    doc["format_version"] = 1
    path.write_text(json.dumps(doc))
    v1 = load_schedule_file(path).schedule
    assert (v1.attn_predictor, v1.mlp_predictor, v1.attn) == (REUSE, REUSE, sched.attn)
    doc["schedule"]["predictors"] = {"attn": {"name": "taylor", "order": 2}, "mlp": {"name": "reuse", "order": 0}}
    path.write_text(json.dumps(doc))
    with pytest.raises(ScheduleFileError, match="format_version 1 file has no schedule.predictors"):
        load_schedule_file(path)
    doc["format_version"] = 2
    doc["schedule"]["predictors"]["attn"]["name"] = "oracle"
    path.write_text(json.dumps(doc))
    with pytest.raises(ScheduleFileError, match="unknown predictor 'oracle'; choose one of: reuse, taylor, lagrange"):
        load_schedule_file(path)


def test_v1_file_loads_as_reuse_and_both_schemas_hold(tmp_path):
    """The shipped v1 file still validates against the v1 schema and loads as reuse; saved again it
    is a v2 file that validates against the v2 schema, as a forecasting schedule's file does."""
    from pathlib import Path

    import jsonschema

    root = Path(__file__).parents[1]
    schema = {v: json.loads((root / "schemas" / f"schedule.v{v}.schema.json").read_text()) for v in (1, 2)}
    shipped = root / "bench" / "schedules" / "dit-tiny-knee.json"
    jsonschema.validate(json.loads(shipped.read_text()), schema[1])
    file = load_schedule_file(shipped)
    assert not file.schedule.forecasts
    upgraded = json.loads(file.save(tmp_path / "v2.json").read_text())
    jsonschema.validate(upgraded, schema[2])
    assert upgraded["schedule"]["predictors"]["attn"] == {"name": "reuse", "order": 0}
    forecasting = save_schedule_file(tmp_path / "f.json", _taylor_schedule(), model=MODEL,
                                     sampler={"name": "ddim", "steps": 12}, eps_scale={"name": "none"})
    jsonschema.validate(json.loads(forecasting.read_text()), schema[2])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(forecasting.read_text()), schema[1])


def test_retarget_keeps_predictors():
    sched = _taylor_schedule()
    times = [1 - i / 11 for i in range(12)]
    for steps in (12, 20, 6, 2):
        target = [1 - i / max(steps - 1, 1) for i in range(steps)] if steps > 1 else [1.0]
        out, _ = retarget_steps(sched, steps, times, target)
        assert (out.attn_predictor, out.mlp_predictor) == (sched.attn_predictor, sched.mlp_predictor)
        assert out.name == sched.name
    deeper, _ = retarget_depth(sched, 7)
    assert (deeper.depth, deeper.attn_predictor, deeper.mlp_predictor) == (7, sched.attn_predictor, sched.mlp_predictor)
    assert sched.with_eps_scale([0.99] * 12).attn_predictor == sched.attn_predictor
    assert sched.renamed("x").mlp_predictor == sched.mlp_predictor


def test_taylor_family_is_taylorseers_table():
    sched = make_schedule("taylor", ScheduleContext.linear(20, 2), interval=4, order=2)
    computed = [i for i in range(20) if sched.attn[i][0]]
    assert computed == [0, 1, 2, 6, 10, 14, 18] and sched.attn == sched.mlp
    assert sched.attn_predictor == sched.mlp_predictor == PredictorSpec("taylor", 2)
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        make_schedule("taylor", ScheduleContext.linear(20, 2), warmup=0)
    with pytest.raises(ConfigError, match="unknown predictor"):
        make_schedule("forecast", ScheduleContext.linear(20, 2), attn_predictor="oracle")


def test_macs_of_a_taylor_schedule_equal_the_hand_count():
    """Taylor O=2, computations at 0, 1, 4, 7 of 10: observes cost 0, 1, 2, 2 multiply-adds per element
    (points 1, 2, 3, 3), forecasts at 2, 3 cost 1 each and at 5, 6, 8, 9 cost 2 each: 15 per slot.
    Lagrange O=2: observes 0, forecasts 2 + 2 (two points) + 4 x 3 (three points) = 16 per slot."""
    ctx = ScheduleContext.linear(10, SMALL.depth)
    sched = make_schedule("taylor", ctx, interval=3, order=2, warmup=2)
    assert [i for i in range(10) if sched.attn[i][0]] == [0, 1, 4, 7]
    elements = SMALL.num_patches * SMALL.hidden_size
    reuse = sampling_macs(SMALL, sched.with_predictors(), batch=3, cfg=True)
    assert sampling_macs(SMALL, sched, batch=3, cfg=True) - reuse == 15 * 2 * SMALL.depth * elements * 3 * 2
    lagrange = PredictorSpec("lagrange", 2)
    one = sampling_macs(SMALL, sched.with_predictors())
    assert sampling_macs(SMALL, sched.with_predictors(lagrange, lagrange)) - one == 16 * 2 * SMALL.depth * elements
    assert forward_macs(SMALL).elements == elements


def test_history_bytes_count_o_plus_1_tensors_per_skipped_slot():
    ctx = ScheduleContext.linear(8, SMALL.depth)
    output = 4 * SMALL.num_patches * SMALL.hidden_size * 2  # model batch 4, bf16
    attn_only = Schedule.from_step_masks([i % 2 == 0 for i in range(8)], [True] * 8, SMALL.depth)
    assert history_bytes(SMALL, attn_only, 4, torch.bfloat16) == SMALL.depth * output
    both = fora(ctx, 2)
    assert history_bytes(SMALL, both, 4, torch.bfloat16) == 2 * SMALL.depth * output
    for order in (1, 2, 3):
        spec = PredictorSpec("taylor", order)
        forecasting = both.with_predictors(spec, spec)
        assert history_bytes(SMALL, forecasting, 4, torch.bfloat16) == (order + 1) * 2 * SMALL.depth * output


def test_fast_path_forecasts_like_the_eager_engine_and_cuda_graphs_refuse(small_dit):
    sched = make_schedule("taylor", ScheduleContext.linear(8, SMALL.depth), interval=3, order=2)
    eager = _sample(small_dit, sched)
    with cached(small_dit, sched) as cache, FastPath(backend="eager").attach(cache):
        fast = _sample(small_dit, cache)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)
    with cached(small_dit, sched) as cache:
        with pytest.raises(ValueError, match="CUDA graphs .* cannot forecast .*cuda_graphs=false"):
            FastPath(backend="eager", graphs=CudaGraphs()).attach(cache)
    assert not hasattr(small_dit, "_ebtune_fast_path")


def test_a_history_is_a_value():
    h = History((3, 1), (torch.zeros(1), torch.ones(1)))
    with pytest.raises(AttributeError):
        h.steps = (4,)


def test_apply_forecasts_with_fresh_histories_per_call(pipe):  # noqa: F811
    """Two pipeline calls give the same images: each starts with empty histories (a second call that
    kept the first's would observe step 0 after step 3 and raise)."""
    base = Schedule.from_step_masks([True, True, False, False], [True, True, False, True], PIPE_DEPTH)
    spec = PredictorSpec("taylor", 1)
    with ebtune.apply(pipe, base):
        reused = _images(pipe)
    with ebtune.apply(pipe, base.with_predictors(spec, spec)) as applied:
        first, second = _images(pipe), _images(pipe)
        assert applied.current.attn_predictor == spec
    assert np.array_equal(first, second)
    assert not np.allclose(first, reused)


def test_forecast_space_loads_and_every_point_builds():
    import optuna

    from ebtune.search.space import load_space

    space = load_space("forecast")
    ctx = ScheduleContext.linear(10, SMALL.depth)
    space.check(ctx)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = space.suggest(study.ask())
        schedule = space.to_schedule(params, ctx)
        assert schedule.attn_predictor == PredictorSpec(params["attn_predictor"], params["attn_order"])
    taylorseer = space.to_schedule(space.seeds[0], ctx)
    assert taylorseer.attn == make_schedule("taylor", ctx).attn
    assert (taylorseer.attn_predictor, taylorseer.mlp_predictor) == (PredictorSpec("taylor", 2),) * 2
