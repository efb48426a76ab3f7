"""An exported schedule file drives a real diffusers DiTPipeline's own denoising loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ebtune
from ebtune.cache.step_counter import step_counter
from ebtune.schedules import ScheduleContext, fora

diffusers = pytest.importorskip("diffusers")
STEPS, DEPTH = 4, 2


@pytest.fixture
def pipe():
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=DEPTH, sample_size=8,
        patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=1,  # the pipeline's null class is 1000
    )
    with torch.no_grad():  # ada_norm_zero starts with zero gates: randomise so caching changes the output
        for p in transformer.parameters():
            p.normal_(0, 0.1)
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8)
    return diffusers.DiTPipeline(transformer=transformer.eval(), vae=vae.eval(), scheduler=diffusers.DDIMScheduler())


def _images(pipe):
    out = pipe(class_labels=[1, 3], num_inference_steps=STEPS, guidance_scale=2.0,
               generator=torch.Generator().manual_seed(0), output_type="np")
    return out.images


def test_exported_schedule_drives_the_pipeline(pipe, tmp_path):
    plain = _images(pipe)
    schedule = fora(ScheduleContext.linear(STEPS, DEPTH), 2)
    path = ebtune.save_schedule_file(tmp_path / "s.json", schedule, model={"family": "diffusers-dit", "depth": DEPTH},
                                     sampler={"name": "ddim", "steps": STEPS}, eps_scale={"name": "none"})
    loaded = ebtune.load_schedule_file(path).schedule
    calls = []
    # A hook inside attn1 counts real computations (a hook on attn1 itself also fires on reuse).
    hook = pipe.transformer.transformer_blocks[0].attn1.to_q.register_forward_hook(lambda *_: calls.append(1))
    with ebtune.cached(pipe.transformer, loaded) as cache, step_counter(cache):
        cached_images = _images(pipe)
    hook.remove()
    assert len(calls) == 2  # attention of block 0 ran at steps 0 and 2 only
    assert not np.allclose(cached_images, plain)
    with ebtune.cached(pipe.transformer, ebtune.no_cache(STEPS, DEPTH)) as cache, step_counter(cache):
        assert np.array_equal(_images(pipe), plain)  # all-compute through the pipeline is exact
    assert np.array_equal(_images(pipe), plain)  # and the pipeline is restored
