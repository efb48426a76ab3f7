"""threads=auto only buys speed: samples are bit-identical whatever the thread count."""
from __future__ import annotations

import pytest
import torch

from ebtune.cli import main
from ebtune.cli.config import compose
from ebtune.run.factory import model_spec, resolve_threads, sampler_from, usable_cores
from ebtune.run.generate import class_balanced_labels, generate
from ebtune.run.loading import load_model
from ebtune.schedules import ScheduleContext, make_schedule


def _sample(threads: int) -> tuple[torch.Tensor, object]:
    cfg = compose(["model=dit-tiny", "steps=10"])
    spec = model_spec(cfg["model"])
    loaded, sampler = load_model(spec), sampler_from(cfg, spec)
    schedule = make_schedule("fora", ScheduleContext(10, loaded.config.depth, sampler.times), interval=2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = generate(loaded, sampler, schedule, class_balanced_labels(20, 10), seed=3, batch_size=20)
    finally:
        torch.set_num_threads(before)
    return out.latents, out.images


def test_samples_are_bit_identical_at_one_and_two_threads():
    one, two = _sample(1), _sample(2)
    assert torch.equal(one[0], two[0])
    assert (one[1] == two[1]).all()


def test_auto_uses_every_usable_core_or_the_per_process_share():
    assert resolve_threads("auto") == usable_cores() == resolve_threads(None)
    assert resolve_threads("auto", per_process=1) == 1
    assert resolve_threads(3) == 3


@pytest.mark.parametrize("value", ["abc", "0"])
def test_bad_threads_is_one_line_naming_the_key(tmp_path, monkeypatch, capsys, value):
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--dry-run", f"threads={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "threads" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "outputs").exists()
