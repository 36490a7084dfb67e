"""Networks of the paper benchmarks, as the Rep-MTL paper (Wang, Li, Xu, ICCV 2025) and
LibMTL (Lin & Zhang, JMLR 2023), whose code it builds on, define them:

- NYUv2 / Cityscapes: a dilated ResNet (output stride 8: layer3 dilated 2, layer4 dilated 4,
  strides removed) as the shared encoder, and one DeepLab ASPP head per task (atrous rates
  12/24/36, 256 channels; torchvision's ``ASPP``, then a 3×3 conv, BatchNorm, ReLU and a
  1×1 conv to the task's channels). Heads predict at feature resolution; the dense losses
  and meters upsample to the target size (benchmarks/dense.py).
- Office-31 / Office-Home: ResNet-18 without its classifier → global average pool →
  Linear(512, 512) → BatchNorm → ReLU → Dropout(0.5) as the shared encoder (the Linear
  initialised N(0, 0.005) with bias 0.1, as LibMTL's example does), one Linear(512, classes)
  head per domain.

ImageNet weights are optional and never downloaded: ``weights`` is ``none``, ``imagenet``
(torchvision's file in its local cache, ``$TORCH_HOME/hub/checkpoints``) or the path of a
torchvision ResNet state dict.

Deviation: the papers call the dense model DeepLabV3+, but LibMTL's code (and so the
published numbers) uses the DeepLabV3 head without the V3+ decoder; this follows the code.
ResNet-18/34 (the quick profiles) have no dilation option in torchvision; they are dilated
here with the same scheme torchvision applies to ResNet-50 (the first block of a stage
keeps the previous dilation).

torchvision is imported inside the functions so that registering the benchmarks stays cheap.
"""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from engine.errors import ConfigError, DataError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
WEIGHTS_HELP = ("data.weights is none (random initialisation), imagenet (torchvision's cached "
                "file) or the path of a torchvision ResNet state dict (.pth)")


def imagenet_url(arch: str) -> str:
    """torchvision's address of the ImageNet (IMAGENET1K_V1) weights of ``arch``."""
    import torchvision.models as tvm

    return tvm.get_model_weights(arch).IMAGENET1K_V1.url


def torchvision_cache_file(arch: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``arch`` once downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(imagenet_url(arch)).path).name


def resolve_weights(spec: str, arch: str) -> Path | None:
    """The weights file that ``spec`` names, checked to exist; None for ``none``.
    Nothing is ever downloaded (the paper benchmarks must run offline)."""
    if spec == "none":
        return None
    if spec == "imagenet":
        path = torchvision_cache_file(arch)
        if not path.is_file():
            raise DataError(
                f"data.weights=imagenet: torchvision's ImageNet weights of {arch} are not in its "
                f"local cache (expected {path}); nothing is downloaded. Copy the file there (it is "
                f"{imagenet_url(arch)}), pass data.weights=/path/to/{path.name}, or "
                f"data.weights=none to train from random initialisation")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"data.weights={spec!r}: no such file; {WEIGHTS_HELP}")
    return path


def _torchvision_resnet(arch: str, dilated: bool) -> nn.Module:
    import torchvision.models as tvm

    if arch not in RESNETS:
        raise ValueError(f"unknown backbone {arch!r}; expected one of {', '.join(RESNETS)}")
    if dilated and arch in ("resnet50", "resnet101"):
        return getattr(tvm, arch)(weights=None, replace_stride_with_dilation=[False, True, True])
    net = getattr(tvm, arch)(weights=None)
    if dilated:
        _dilate_basic_stage(net.layer3, previous=1, dilation=2)
        _dilate_basic_stage(net.layer4, previous=2, dilation=4)
    return net


def _dilate_basic_stage(stage: nn.Sequential, previous: int, dilation: int) -> None:
    """Remove the stride of a BasicBlock stage and dilate its 3×3 convs (torchvision's
    scheme for Bottleneck: the first block keeps the previous stage's dilation)."""
    for i, block in enumerate(stage):
        d = previous if i == 0 else dilation
        for conv in (block.conv1, block.conv2):
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def read_state_dict(path: Path, what: str) -> dict[str, Tensor]:
    """A state dict of tensors read from ``path`` with ``weights_only`` (a checkpoint that
    wraps it under "state_dict" is unwrapped); ``what`` names the network in errors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise DataError(f"weights file {path}: cannot be read as a PyTorch state dict "
                        f"({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"weights file {path}: expected a state dict of tensors "
                        f"(parameter name -> tensor) of {what}")
    return state


def check_fits(path: Path, state: dict[str, Tensor], expected: dict[str, torch.Size],
               what: str) -> None:
    """Refuse a state dict whose keys or shapes differ from ``expected``, naming a few."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k])
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("wrong shape", wrong)) if keys]
        raise DataError(f"weights file {path} does not fit {what} ({'; '.join(parts)})")


def load_state(path: Path, arch: str) -> dict[str, Tensor]:
    """A torchvision ResNet state dict read from ``path`` and checked against ``arch``
    (the classifier ``fc.*`` may be present or not; it is dropped)."""
    what = f"a torchvision {arch}"
    state = {k: v for k, v in read_state_dict(path, what).items() if not k.startswith("fc.")}
    expected = {k: v.shape for k, v in _torchvision_resnet(arch, dilated=False).state_dict().items()
                if not k.startswith("fc.")}
    check_fits(path, state, expected, what)
    return state


def resnet_trunk(arch: str, dilated: bool, state: dict[str, Tensor] | None) -> nn.Sequential:
    """A ResNet without its pooling and classifier: stem, layer1..layer4."""
    net = _torchvision_resnet(arch, dilated)
    if state is not None:
        net.load_state_dict(state, strict=False)  # fc is absent from `state` (checked above)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return nn.Sequential(stem, net.layer1, net.layer2, net.layer3, net.layer4)


def trunk_channels(arch: str) -> int:
    return 512 if arch in ("resnet18", "resnet34") else 2048


class ASPPHead(nn.Module):
    """DeepLab head: ASPP (1×1, three atrous 3×3 and image pooling branches, projected to
    ``channels`` with dropout 0.5), a 3×3 conv + BatchNorm + ReLU, a 1×1 conv to ``out``."""

    def __init__(self, in_channels: int, out: int, rates: Sequence[int] = (12, 24, 36),
                 channels: int = 256):
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.net = nn.Sequential(
            ASPP(in_channels, list(rates), channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, out, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class OfficeEncoder(nn.Module):
    """ResNet-18 trunk → global average pool → Linear(512, hidden) → BatchNorm → ReLU →
    Dropout(0.5)."""

    def __init__(self, arch: str, state: dict[str, Tensor] | None, hidden: int = 512):
        super().__init__()
        self.trunk = resnet_trunk(arch, dilated=False, state=state)
        self.pool = nn.AdaptiveAvgPool2d(1)
        linear = nn.Linear(trunk_channels(arch), hidden)
        nn.init.normal_(linear.weight, 0.0, 0.005)
        nn.init.constant_(linear.bias, 0.1)
        self.hidden = nn.Sequential(linear, nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.hidden(torch.flatten(self.pool(self.trunk(x)), 1))


def check_train_batch(batch_size: int, sizes: dict[str, int]) -> None:
    """Refuse a training batch size that BatchNorm or the data cannot serve."""
    if batch_size < 2:
        raise ConfigError(f"train.batch_size={batch_size}: the networks' BatchNorm layers "
                          f"(ASPP image pooling, Office's hidden layer) need at least 2 images "
                          f"per training batch")
    for what, n in sizes.items():
        if n < batch_size:
            raise ConfigError(f"train.batch_size={batch_size} exceeds the {n} images of {what}; "
                              f"every training step needs a full batch")
