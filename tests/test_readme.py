"""The README's "In your own code" snippet runs as written on dit-tiny, and its own loop is the sampler's."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from tests.test_pipeline import DEPTH, STEPS, pipe  # noqa: F401  (pipe is a fixture)

README = Path(__file__).resolve().parents[1] / "README.md"


def _own_code_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## In your own code", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_own_code_snippet_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    blocks = _own_code_blocks()
    assert len(blocks) == 2 and "ebtune.apply(pipe" in blocks[1]  # the second needs a real diffusers pipeline
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    images, latents, x = scope["images"], scope["latents"], scope["x"]
    assert images.dtype == np.uint8 and images.shape == (8, 16, 16, 1)
    torch.testing.assert_close(x, latents, rtol=0, atol=1e-6)  # the hand-written loop equals Sampler.sample (DDIM)
    assert scope["schedule"].compute_fraction("attn") < 1  # the snippet really caches


def test_pipeline_snippet_runs_on_a_dit_pipeline(pipe, tmp_path, monkeypatch):  # noqa: F811
    import ebtune
    from ebtune.schedules import ScheduleContext, fora

    monkeypatch.chdir(tmp_path)
    ebtune.save_schedule_file("tuned.json", fora(ScheduleContext.linear(STEPS, DEPTH), 2),
                              model={"family": "diffusers-dit", "depth": DEPTH}, sampler={"name": "ddim", "steps": STEPS},
                              eps_scale={"name": "ebcache"})
    scope = {"ebtune": ebtune, "pipe": pipe}
    exec(compile(_own_code_blocks()[1], "README.md", "exec"), scope)
    assert scope["image"].size == (8, 8)  # a PIL image (the tiny VAE keeps 8 px) from the 25-step call, the schedule retargeted from 4
    assert "set_timesteps" not in vars(pipe.scheduler)
