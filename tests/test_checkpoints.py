"""Loading official-layout weights: state dicts, training checkpoints, safetensors, and refusals."""
from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from ebtune.core.dit import DiT, DiTConfig, dit_config
from ebtune.io.checkpoints import (
    CheckpointError,
    infer_config,
    load_checkpoint,
    load_into,
    read_state_dict,
)

from .conftest import SMALL

OFFICIAL_KEYS = [
    "pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight",
    "y_embedder.embedding_table.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
    "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "blocks.0.adaLN_modulation.1.weight",
    "final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight",
]


def test_official_names_and_xl_size():
    with torch.device("meta"):
        xl = DiT(dit_config("DiT-XL/2", 256))
    keys = set(xl.state_dict())
    assert set(OFFICIAL_KEYS) <= keys
    assert round(sum(p.numel() for p in xl.parameters()) / 1e6) == 675  # the paper's 675M
    assert xl.y_embedder.embedding_table.num_embeddings == 1001  # null label at index 1000
    assert xl.final_layer.linear.out_features == 2 * 2 * 8  # learned sigma: 2 x 4 channels


@pytest.mark.parametrize("layout", ["bare", "training", "safetensors"])
def test_round_trip(tmp_path, small_dit, layout):
    state = small_dit.state_dict()
    if layout == "bare":
        path = tmp_path / "w.pt"
        torch.save(state, path)
    elif layout == "training":
        path = tmp_path / "0100000.pt"
        junk = {k: torch.zeros_like(v) for k, v in state.items()}
        torch.save({"model": junk, "ema": state, "opt": {}, "args": argparse.Namespace(model="DiT-S/2")}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    fresh = load_checkpoint(DiT(SMALL), path)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_wrong_shape_names_the_config_that_fits(tmp_path):
    other = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=2, num_heads=4, num_classes=5))
    torch.save(other.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="does not fit this model.*fits depth=2 hidden_size=48"):
        load_checkpoint(DiT(SMALL), tmp_path / "w.pt")


def test_wrong_keys_and_preset_name(tmp_path):
    with torch.device("meta"):
        s2 = DiT(dit_config("DiT-S/2", 256))
    assert infer_config(s2.state_dict()) == dit_config("DiT-S/2", 256)
    state = {k.replace("attn.qkv", "attn.to_qkv"): v for k, v in DiT(SMALL).state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="6 missing and 6 unexpected keys"):
        load_checkpoint(DiT(SMALL), tmp_path / "w.pt")


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        read_state_dict(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out


def test_missing_file_says_where(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*model.ckpt=PATH"):
        read_state_dict(tmp_path / "nope.pt")


def test_mis_shaped_tensors(tmp_path):
    wider = DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=3, num_heads=4, num_classes=5))
    torch.save(wider.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"41 mis-shaped keys .*\(288,\) vs \(192,\).*fits depth=3 hidden_size=48"):
        load_checkpoint(DiT(SMALL), tmp_path / "w.pt")


def test_diffusers_dit_weights_load_and_match(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    theirs = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, sample_size=8,
        patch_size=2, num_embeds_ada_norm=5, norm_num_groups=1,
    ).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.1)
        # Released diffusers DiTs hold identical copies of the one official embedder in every block.
        theirs.transformer_blocks[1].norm1.emb.load_state_dict(theirs.transformer_blocks[0].norm1.emb.state_dict())
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    ours = load_checkpoint(DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=2, num_heads=2,
                                         num_classes=5)), tmp_path / "diffusion_pytorch_model.safetensors").eval()
    x, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 5])
    t = torch.zeros(2, dtype=torch.long)  # at t = 0 both timestep featurisations agree exactly
    with torch.no_grad():
        want = theirs(x, timestep=t, class_labels=y).sample
        got = ours(x, t, y)
    # What remains is the LayerNorm epsilon (1e-5 in diffusers' second norm, 1e-6 in DiT).
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        theirs.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight.add_(1.0)
    with pytest.raises(ValueError, match="block 1's copy of norm1.emb.class_embedder.embedding_table.weight differs"):
        load_into(DiT(DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=16, depth=2, num_heads=2, num_classes=5)),
                  theirs.state_dict())
