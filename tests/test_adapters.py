from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from ebtune.cache.adapters import Adapter  # noqa: E402
from ebtune.cache.adapters.diffusers_dit import DiffusersDiTAdapter  # noqa: E402
from ebtune.cache.adapters.pixart import PixArtAdapter  # noqa: E402
from ebtune.cache.engine import cached  # noqa: E402
from ebtune.cache.step_counter import step_counter  # noqa: E402
from ebtune.core.schedule import Schedule, no_cache  # noqa: E402

STEPS, DEPTH = 4, 2


@dataclass
class Case:
    name: str
    build: Callable[[], torch.nn.Module]
    adapter: type[Adapter]
    call: Callable[[torch.nn.Module, int], torch.Tensor]  # one denoising call at step i


def tiny_dit() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, num_layers=DEPTH, sample_size=8,
        patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1,
    ).eval()


def tiny_pixart() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=DEPTH,
        sample_size=8, patch_size=2, cross_attention_dim=16, norm_num_groups=1,
    ).eval()


def latents(i: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 8, 8, generator=g) * (1 - 0.2 * i)


def call_dit(model: torch.nn.Module, i: int) -> torch.Tensor:
    t = torch.full((2,), 900 - 250 * i)
    return model(latents(i), timestep=t, class_labels=torch.tensor([3, 7])).sample


def call_pixart(model: torch.nn.Module, i: int) -> torch.Tensor:
    text = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    t = torch.full((2,), 900 - 250 * i)
    return model(latents(i), encoder_hidden_states=text, timestep=t,
                 added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample


CASES = [Case("diffusers-dit", tiny_dit, DiffusersDiTAdapter, call_dit),
         Case("pixart", tiny_pixart, PixArtAdapter, call_pixart)]

# Step 1 reuses attention in every block, step 2 the MLP of block 1 only, step 3 both in block 0.
REUSE = Schedule(
    attn=[(True, True), (False, False), (True, True), (False, True)],
    mlp=[(True, True), (True, True), (True, False), (False, True)],
    name="reuse",
)


@torch.no_grad()
def run(case: Case, model: torch.nn.Module, cache=None) -> list[torch.Tensor]:
    outs = []
    for i in range(STEPS):
        if cache is not None:
            cache.set_step(i)
        outs.append(case.call(model, i))
    return outs


@torch.no_grad()
def reference_with_reuse(case: Case, schedule: Schedule) -> list[torch.Tensor]:
    """Independent reference: the unwrapped model, with forward hooks that replace each reused branch
    output by the last computed one (the block still applies the current step's gate)."""
    model = case.build()
    last: dict[tuple[int, str], torch.Tensor] = {}
    step = [0]
    handles = []
    for b, block in enumerate(model.transformer_blocks):
        for branch, module in (("attn", block.attn1), ("mlp", block.ff)):
            def hook(mod, args, out, key=(b, branch)):
                if schedule.mask(key[1])[step[0]][key[0]]:
                    last[key] = out
                    return out
                return last[key]
            handles.append(module.register_forward_hook(hook))
    outs = []
    for i in range(STEPS):
        step[0] = i
        outs.append(case.call(model, i))
    for h in handles:
        h.remove()
    return outs


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_adapter_matches_only_its_model(case):
    model = case.build()
    assert case.adapter.matches(model)
    others = [c for c in CASES if c.adapter is not case.adapter]
    assert not any(c.adapter.matches(model) for c in others)
    assert len(case.adapter().branch_sites(model)) == DEPTH


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_all_compute_is_bit_identical_and_close_restores(case):
    model = case.build()
    reference = run(case, model)
    with cached(model, no_cache(STEPS, DEPTH), adapter=case.adapter()) as cache:
        assert same(run(case, model, cache), reference)
    assert not any("forward" in vars(m) for blk in model.transformer_blocks for m in (blk.attn1, blk.ff))
    assert same(run(case, model), reference)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reuse_skips_the_branch_and_applies_the_current_gate(case, monkeypatch):
    model = case.build()
    uncached = run(case, model)
    calls = {"attn": 0, "mlp": 0}
    block = model.transformer_blocks[0]
    for branch, module in (("attn", block.attn1), ("mlp", block.ff)):
        def counting(*args, _original=module.forward, _branch=branch, **kwargs):
            calls[_branch] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, "forward", counting)
    with cached(model, REUSE, adapter=case.adapter()) as cache:
        outs = run(case, model, cache)
    assert calls == {"attn": 2, "mlp": 3}  # block 0 computes attn at steps 0, 2 and mlp at 0, 1, 2
    assert same(outs, reference_with_reuse(case, REUSE))
    assert not torch.equal(outs[1], uncached[1])
    monkeypatch.undo()
    assert same(run(case, model), uncached)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_step_counter_drives_the_cache_and_restarts_per_run(case):
    model = case.build()
    with cached(model, REUSE, adapter=case.adapter()) as cache:
        explicit = run(case, model, cache)
        with step_counter(cache) as counter:
            first = run(case, model)
            second = run(case, model)
            assert counter.calls == STEPS
            with pytest.raises(RuntimeError, match="already attached"):
                step_counter(cache)
        assert not model._forward_pre_hooks and "_ebtune_step_counter" not in vars(model)
    assert same(first, explicit) and same(second, explicit)


def test_chunked_feed_forward_is_refused():
    model = tiny_dit()
    model.transformer_blocks[1].set_chunk_feed_forward(2)
    with pytest.raises(ValueError, match="block 1 chunks its feed-forward; call block.set_chunk_feed_forward"):
        cached(model, no_cache(STEPS, DEPTH), adapter=DiffusersDiTAdapter())
    assert not any("forward" in vars(b.attn1) for b in model.transformer_blocks)
