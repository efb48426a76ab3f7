"""`ebtune.apply(pipe, schedule)`: masks, ε scaling and step count on a real diffusers DiTPipeline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ebtune
from ebtune.errors import ConfigError
from ebtune.run.pipeline_apply import pipeline_times
from ebtune.schedules import ScheduleContext, fora
from tests.test_pipeline import DEPTH, STEPS, _images, pipe  # noqa: F401  (pipe is a fixture)

GUIDANCE = 2.0  # what tests.test_pipeline._images passes
FACTORS = (0.9, 0.95, 1.0, 0.97)


def _save(tmp_path, schedule, steps, eps=None, **model):
    return ebtune.save_schedule_file(
        tmp_path / f"s{steps}.json", schedule, model={"family": "diffusers-dit", "depth": DEPTH, **model},
        sampler={"name": "ddim", "steps": steps}, eps_scale=eps or {"name": "none"})


def _scaled(factors=FACTORS):
    base = ebtune.no_cache(STEPS, DEPTH)
    return ebtune.Schedule(base.attn, base.mlp, factors, "scaled")


def test_eps_is_scaled_exactly_as_ebtunes_sampler(pipe):  # noqa: F811
    """At every step the scheduler receives b_i · guided ε, the guided ε computed by ebtune's own
    `Sampler.guided` from the plain transformer on the same inputs."""
    seen, inputs = [], []
    step = pipe.scheduler.step
    pipe.scheduler.step = lambda out, t, x, **kw: (seen.append(out.clone()), step(out, t, x, **kw))[1]
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: inputs.append((args[0].clone(), kwargs["timestep"], kwargs["class_labels"])),
        with_kwargs=True)
    with ebtune.apply(pipe, _scaled()):
        _images(pipe)
    hook.remove()
    del pipe.scheduler.step
    sampler = ebtune.make_sampler("ddim", STEPS, ebtune.Guidance(scale=GUIDANCE, channels=None))
    assert len(seen) == len(inputs) == STEPS
    for i, ((x, t, y), out) in enumerate(zip(inputs, seen)):
        with torch.no_grad():
            raw = pipe.transformer(x, timestep=t, class_labels=y).sample
        eps, _ = sampler.guided(raw, C=4)
        torch.testing.assert_close(out[: len(eps)], FACTORS[i] * eps, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[len(eps):], FACTORS[i] * eps, rtol=1e-5, atol=1e-6)  # the pipeline's copy


def test_eps_scaling_changes_images_and_unit_factors_do_not(pipe):  # noqa: F811
    plain = _images(pipe)
    with ebtune.apply(pipe, _scaled()):
        scaled = _images(pipe)
    with ebtune.apply(pipe, _scaled((1.0,) * STEPS)):
        unit = _images(pipe)
    assert not np.allclose(scaled, plain, atol=1e-4)
    assert np.array_equal(unit, plain)


def test_each_call_starts_fresh_and_exit_restores(pipe, tmp_path):  # noqa: F811
    plain = _images(pipe)
    cached = fora(ScheduleContext.linear(STEPS, DEPTH), 2)
    path = _save(tmp_path, cached, STEPS)
    with ebtune.apply(pipe, str(path)) as applied:
        first = _images(pipe)
        second = _images(pipe)
        assert applied.current == cached  # same step count: the file's schedule as it is
    assert np.array_equal(first, second)
    assert not np.allclose(first, plain)
    with ebtune.apply(pipe, ebtune.load_schedule_file(path)):  # a loaded file works the same
        assert np.array_equal(_images(pipe), first)
    assert np.array_equal(_images(pipe), plain)
    assert "set_timesteps" not in vars(pipe.scheduler)
    assert not pipe.transformer._forward_hooks and not pipe.transformer._forward_pre_hooks


def test_retargets_to_the_calls_step_count_with_the_files_eps_rule(pipe, tmp_path):  # noqa: F811
    rule = {"name": "ebcache", "b_h": 0.9, "b_l": 0.8, "t_s": 0.4}
    tuned = fora(ScheduleContext.linear(8, DEPTH), 2)
    tuned = ebtune.Schedule(tuned.attn, tuned.mlp, ebtune.make_eps_scale(**rule).factors(
        ScheduleContext.linear(8, DEPTH).times), tuned.name)
    path = _save(tmp_path, tuned, 8, eps=rule)
    with ebtune.apply(pipe, path) as applied:
        with pytest.warns(UserWarning, match="8-step schedule fitted to 4 steps"):
            first = _images(pipe)
        assert applied.current.steps == STEPS
        assert applied.current.eps_scale == pytest.approx(
            ebtune.make_eps_scale(**rule).factors(pipeline_times(pipe.scheduler)))
        pipe(class_labels=[1], num_inference_steps=6, output_type="np")
        assert applied.current.steps == 6
        assert np.array_equal(_images(pipe), first)  # back at 4 steps: nothing carried over


def test_refuses_what_it_cannot_map(pipe, tmp_path):  # noqa: F811
    deeper = ebtune.no_cache(STEPS, DEPTH + 1)
    for schedule in (deeper, ebtune.save_schedule_file(  # ebtune's own DiT family maps onto diffusers' DiT
            tmp_path / "d.json", deeper, model={"family": "dit", "depth": DEPTH + 1},
            sampler={"name": "ddim", "steps": STEPS}, eps_scale={"name": "none"})):
        with pytest.raises(ConfigError, match=f"schedule has {DEPTH + 1} blocks but DiTTransformer2DModel has {DEPTH}"):
            ebtune.apply(pipe, schedule)
    with pytest.raises(ConfigError, match="family 'pixart'"):
        ebtune.apply(pipe, _save(tmp_path, ebtune.no_cache(STEPS, DEPTH), STEPS, family="pixart"))
    with pytest.raises(ConfigError, match="input_size 32"):
        ebtune.apply(pipe, _save(tmp_path, ebtune.no_cache(STEPS, DEPTH), STEPS, input_size=32))
    with ebtune.apply(pipe, _scaled()):
        with pytest.raises(RuntimeError, match="already applied"):
            ebtune.apply(pipe, _scaled())


def test_more_transformer_calls_than_timesteps_is_refused(pipe):  # noqa: F811
    x = torch.zeros(2, 4, 8, 8)
    with ebtune.apply(pipe, _scaled()), torch.no_grad():
        pipe.scheduler.set_timesteps(STEPS)
        for t in pipe.scheduler.timesteps:
            pipe.transformer(x, timestep=t.expand(2), class_labels=torch.tensor([1, 3]))
        with pytest.raises(ConfigError, match="more often than its 4 timesteps"):
            pipe.transformer(x, timestep=t.expand(2), class_labels=torch.tensor([1, 3]))
