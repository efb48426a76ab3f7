"""Model families: diffusers' DiTTransformer2DModel is loaded, counted, searched and applied natively.

The diffusers model is dit-tiny's own network in diffusers' layout (its embedded weights mapped key by
key, checked by converting them back with `ebtune.io.diffusers_weights`), so the digits decoder and
the digits-native metric score real digits.
"""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import ebtune
from ebtune.cli.config import compose
from ebtune.core.dit import DiT
from ebtune.core.macs import sampling_macs
from ebtune.core.schedule import Schedule, no_cache
from ebtune.errors import ConfigError
from ebtune.io.checkpoints import read_state_dict
from ebtune.io.diffusers_weights import dit_state_from_diffusers
from ebtune.run.families import FAMILIES, ModelFamily
from ebtune.run.factory import model_spec
from ebtune.run.families.dit import EMBEDDED_WEIGHTS
from ebtune.run.loading import ModelSpec, load_model
from ebtune.sampling.samplers import Guidance, make_sampler

from .conftest import TINY_SEARCH

diffusers = pytest.importorskip("diffusers")

TINY = ebtune.load_model("dit-tiny").config
# diffusers' names for the official DiT's, per block (qkv is split into to_q, to_k, to_v).
BLOCK_KEYS = {"norm1.linear": "adaLN_modulation.1", "attn1.to_out.0": "attn.proj", "ff.net.0.proj": "mlp.fc1",
              "ff.net.2": "mlp.fc2"}
EMBEDDER_KEYS = {"timestep_embedder.linear_1": "t_embedder.mlp.0", "timestep_embedder.linear_2": "t_embedder.mlp.2",
                 "class_embedder.embedding_table": "y_embedder.embedding_table"}
TOP_KEYS = {"pos_embed.proj": "x_embedder.proj", "proj_out_1": "final_layer.adaLN_modulation.1",
            "proj_out_2": "final_layer.linear"}


def tiny_in_diffusers_layout() -> dict[str, torch.Tensor]:
    """dit-tiny's embedded weights under diffusers' DiTTransformer2DModel keys (every block holds a
    copy of the timestep and class embedders)."""
    dit = read_state_dict(EMBEDDED_WEIGHTS / "dit-tiny.safetensors")
    out = {}
    for kind in ("weight", "bias"):
        for src, dst in TOP_KEYS.items():
            out[f"{src}.{kind}"] = dit[f"{dst}.{kind}"]
        for i in range(TINY.depth):
            for src, dst in BLOCK_KEYS.items():
                out[f"transformer_blocks.{i}.{src}.{kind}"] = dit[f"blocks.{i}.{dst}.{kind}"]
            for x, part in zip("qkv", dit[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)):
                out[f"transformer_blocks.{i}.attn1.to_{x}.{kind}"] = part
            for src, dst in EMBEDDER_KEYS.items():
                if f"{dst}.{kind}" in dit:
                    out[f"transformer_blocks.{i}.norm1.emb.{src}.{kind}"] = dit[f"{dst}.{kind}"]
    return out


def tiny_transformer() -> torch.nn.Module:
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=TINY.num_heads, attention_head_dim=TINY.hidden_size // TINY.num_heads,
        in_channels=TINY.in_channels, out_channels=TINY.out_channels, num_layers=TINY.depth,
        sample_size=TINY.input_size, patch_size=TINY.patch_size, num_embeds_ada_norm=TINY.num_classes)
    model.load_state_dict(tiny_in_diffusers_layout(), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("diffusers-dit")
    tiny_transformer().save_pretrained(path)
    return path


def spec(folder, **settings) -> ModelSpec:
    cfg = compose(["model=dit-tiny", "model.family=diffusers-dit", f"model.ckpt={folder}",
                                     *(f"model.{k}={v}" for k, v in settings.items())])
    return model_spec(cfg["model"])


def test_the_diffusers_layout_converts_back_to_dit_tiny_exactly():
    back = dit_state_from_diffusers(tiny_in_diffusers_layout(), TINY.input_size // TINY.patch_size)
    dit = read_state_dict(EMBEDDED_WEIGHTS / "dit-tiny.safetensors")
    assert back.keys() == dit.keys() and all(torch.equal(back[k], dit[k]) for k in dit)


# The contract suite runs on every registered family: name → the spec of a small model of it.
CASES = {
    "dit": lambda folder: ModelSpec("dit-tiny", "tiny", image_size=16, decoder="digits"),
    "diffusers-dit": lambda folder: spec(folder),
}


def test_every_family_has_a_contract_case():
    assert set(CASES) == set(FAMILIES)
    for name in FAMILIES:
        family = FAMILIES.make(name)
        assert isinstance(family, ModelFamily) and family.name == name


def _measured_macs(fn) -> float:
    # The math SDPA backend decomposes attention into matmuls the counter sees.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2  # FLOPs = 2 × MACs


@pytest.mark.parametrize("name", list(CASES))
def test_family_contract_call_cache_macs_and_schedule_file(name, folder):
    loaded = load_model(CASES[name](folder))
    family, config = loaded.spec.model_family, loaded.config
    null = family.null_label(config)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([1, 50, 999]), torch.tensor([0, 7, null])
    with torch.no_grad():
        out = loaded.model(x, t, y)
        assert out.shape == (3, config.out_channels, config.input_size, config.input_size)
        with ebtune.cached(loaded.model, no_cache(1, config.depth)):  # all-compute: bit-identical
            assert torch.equal(loaded.model(x, t, y), out)
        assert _measured_macs(lambda: loaded.model(x, t, y)) == 3 * family.forward_macs(config).total
    # A guided run that reuses branches: every step pays embedders and adaLN, only computed branches run.
    schedule = Schedule(attn=[(True,) * 6, (False,) * 6, (True, False) * 3, (False,) * 6],
                        mlp=[(True,) * 6, (True,) * 6, (False,) * 6, (False, True) * 3])
    sampler = make_sampler("ddim", 4, Guidance(1.5, null, None))
    noise, labels = torch.randn(2, 4, 8, 8), torch.tensor([3, 4])
    assert _measured_macs(lambda: sampler.sample(loaded.model, noise, labels, schedule)) == loaded.macs(
        schedule, batch=2, cfg=True)
    assert loaded.schedule_model() == {"family": name, "name": "dit-tiny", "depth": 6, "input_size": 8, "patch_size": 2}


def test_dit_family_is_the_default_and_counts_as_before():
    loaded = ebtune.load_model("dit-tiny")
    assert loaded.spec.family == "dit" and type(loaded.model) is DiT and loaded.config == TINY
    schedule = Schedule(attn=[(True,) * 6, (False,) * 6], mlp=[(True,) * 6, (True, False) * 3])
    assert loaded.macs(schedule, batch=3, cfg=True) == sampling_macs(loaded.config, schedule, batch=3, cfg=True)


def test_the_diffusers_family_runs_diffusers_own_module_and_counts_its_extra_embedders(folder):
    loaded = load_model(spec(folder))
    assert isinstance(loaded.model, diffusers.DiTTransformer2DModel) and loaded.config == TINY
    native = diffusers.DiTTransformer2DModel.from_pretrained(folder).eval()
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([5, 500, 999]), torch.tensor([0, 7, 10])  # 10: the null class
    with torch.no_grad():
        assert torch.equal(loaded.model(x, t, y), native(x, timestep=t, class_labels=y).sample)
    # Every block recomputes the timestep MLP (256·D + D·D) that DiT computes once per forward.
    D, schedule = TINY.hidden_size, no_cache(4, TINY.depth)
    assert loaded.macs(schedule) - sampling_macs(TINY, schedule) == 4 * TINY.depth * (256 * D + D * D)


@pytest.mark.parametrize("settings, message", [
    ({"family": "unet"}, "unknown model.family 'unet'; choose one of: dit, diffusers-dit"),
    ({"family": "diffusers-dit", "ckpt": "null"}, "model.family=diffusers-dit needs model.ckpt=FOLDER"),
    ({"family": "diffusers-dit", "ckpt": "{empty}"}, "holds no diffusers model config (config.json)"),
    ({"family": "diffusers-dit", "ckpt": "{other}"}, "holds a PixArtTransformer2DModel, not a DiTTransformer2DModel"),
])
def test_a_wrong_family_or_folder_is_one_config_error_line(tmp_path, settings, message):
    from ebtune.search import SearchConfig

    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"_class_name": "PixArtTransformer2DModel"}))
    overrides = [f"model.{k}={str(v).format(empty=tmp_path / 'empty', other=tmp_path / 'other')}" for k, v in settings.items()]
    cfg = compose([*TINY_SEARCH, *overrides], config_name="search")
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        SearchConfig.from_mapping(cfg)
    assert "\n" not in str(error.value)


@pytest.mark.slow  # about 30 s on a shared 2-core CPU, most of it MLflow creating its store
def test_a_search_runs_on_the_diffusers_model_and_its_schedules_apply_back(folder, tmp_path, monkeypatch):
    from ebtune.search import SearchConfig, run_search
    from ebtune.search.records import SearchRecord
    from ebtune.search.study import load_folder_study

    monkeypatch.chdir(tmp_path)  # the baseline store and the MLflow store stay in the test's folder
    out = tmp_path / "search"
    cfg = compose([*TINY_SEARCH, "model.family=diffusers-dit", f"model.ckpt={folder}", "trials=2", "name=fam",
                   f"out={out}", "threads=1", "steps=5", "metric.n_samples=10"], config_name="search")
    result = run_search(SearchConfig.from_mapping(cfg), log=lambda line: None)
    assert (result.exit_code, result.status) == (0, "FINISHED")
    trials = SearchRecord(load_folder_study(out)).trials()
    assert len(trials) == 2
    assert all(math.isfinite(v) for t in trials for k, v in t["metrics"].items() if not k.endswith("_std"))
    files = sorted((out / "schedules").glob("*.json"))
    assert files and all(json.loads(f.read_text())["model"]["family"] == "diffusers-dit" for f in files)

    # A trial's schedule file drives a diffusers DiTPipeline around the same folder's transformer: the
    # pipeline's transformer work drops by exactly what the family counts for the skipped branches.
    loaded = load_model(spec(folder))
    trial = trials[0]
    file = ebtune.load_schedule_file(out / trial["schedule_file"])
    assert trial["metrics"]["macs"] == loaded.macs(file.schedule, cfg=True)  # cfg_scale 1.5: a doubled batch
    steps = file.schedule.steps
    pipe = _pipeline(folder)
    plain, plain_macs = _run(pipe, steps)
    with ebtune.apply(pipe, out / trial["schedule_file"]) as applied:
        cached_out, cached_macs = _run(pipe, steps)
        assert applied.current == file.schedule and applied.notes == []
    saved = loaded.macs(no_cache(steps, TINY.depth), batch=2) - loaded.macs(file.schedule, batch=2)
    assert plain_macs - cached_macs == saved > 0
    assert not torch.equal(cached_out, plain)
    assert torch.equal(_run(pipe, steps)[0], plain)  # closing the handle restored the pipeline


def _pipeline(folder) -> object:
    vae = diffusers.AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                                  up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8)
    transformer = diffusers.DiTTransformer2DModel.from_pretrained(folder).eval()
    return diffusers.DiTPipeline(transformer=transformer, vae=vae.eval(), scheduler=diffusers.DDIMScheduler())


def _run(pipe, steps: int) -> tuple[torch.Tensor, float]:
    # guidance_scale 1: DiTPipeline's null class is ImageNet's (1000); this model has 10 classes.
    images: list[torch.Tensor] = []
    macs = _measured_macs(lambda: images.append(pipe(
        class_labels=[1, 3], num_inference_steps=steps, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
        output_type="pt").images))
    return images[0], macs
