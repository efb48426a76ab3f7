"""`ebtune sample` end to end on the embedded model, and its one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from ebtune.cli import main


def test_sample_writes_grid_and_npz(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", "steps=6", "n=5", "seed=1", f"out={out}", "schedule=intervals", "schedule.attn=3",
                 "schedule.mlp=2", "eps_scale=constant", "eps_scale.value=1.01"]) == 0
    printed = capsys.readouterr().out
    z = np.load(out / "samples.npz")
    assert z["images"].dtype == np.uint8 and z["images"].shape == (5, 16, 16, 1)
    assert z["labels"].dtype == np.int64 and z["labels"].tolist() == [0, 1, 2, 3, 4]
    assert (out / "grid.png").stat().st_size > 0
    assert "MACs:" in printed and "MAC-ideal speedup vs no cache: " in printed and "wall time:" in printed
    speedup = float(printed.split("MAC-ideal speedup vs no cache: ")[1].split("x")[0])
    assert 1.5 < speedup < 3.0


@pytest.mark.parametrize(
    "args,message",
    [
        (["model=dit-q"], "unknown model 'dit-q'; choose one of: dit-b"),
        (["model=dit-xl", "model.ckpt=/nonexistent/DiT.pt"], "checkpoint not found: /nonexistent/DiT.pt; put the file there or set model.ckpt=PATH"),
        (["model=dit-xl"], "checkpoint not found: weights/DiT-XL-2-256x256.pt"),
        (["steps=0"], "steps must be"),
        (["schedule=fora", "schedule.interval=0"], "cache intervals must be at least 1"),
        (["schedule=intervals", "schedule.attn=0"], "cache intervals must be at least 1"),
        (["sampler=euler"], "unknown sampler 'euler'; choose one of: ddim, ddpm"),
        (["n=0"], "n must be at least 1"),
        (["stepz=3"], "stepz"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
