"""The paper benchmarks (nyuv2, cityscapes, office31, officehome) on fixture datasets that
the tests write in each exact on-disk format: end-to-end runs, every reader error, the
generated split, the label order, the augmentation and the networks."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.registry import BENCHMARKS
from datasets.image_folders import (
    Entry, read_class_names, scan_class_folders, split_counts, stratified_split,
)
from datasets.npy_dense import scale_crop_flip
from engine.errors import ConfigError, DataError
from tests.helpers import read_records, read_summary, tiny_run

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
DENSE_SIZE = (24, 32)
TINY_DENSE = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=2",
              "data.head_channels=8", "data.aspp_rates=[1,2]", "data.workers=1",
              "data.val_fraction=0.25"]
TINY_OFFICE = ["train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=2",
               "data.image_size=32", "data.workers=0"]
O31 = ("amazon", "dslr", "webcam")
OH = ("Art", "Clipart", "Product", "Real_World")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two OpenMP threads on a busy 2-core machine spin against each other (a ResNet-18
    # step took 50x longer); one thread keeps these runs small.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- fixtures

def write_dense(root: Path, counts=(("train", 8), ("val", 4)), size=DENSE_SIZE, classes=13,
                normals=True, label_dir="label", seed=0) -> Path:
    """The MTAN/LibMTL layout: ROOT/{train,val}/{image,label,depth,normal}/{i}.npy, HWC."""
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in counts:
        kinds = {"image": "image", "label": label_dir, "depth": "depth"}
        if normals:
            kinds["normal"] = "normal"
        for folder in kinds.values():
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3)))  # float64
            label = rng.integers(-1, classes, (h, w)).astype(np.float32)
            np.save(root / split / label_dir / f"{i}.npy", label)
            depth = (rng.random((h, w, 1)) * 5).astype(np.float32)
            depth[0, :3] = 0
            np.save(root / split / "depth" / f"{i}.npy", depth)
            if normals:
                v = rng.normal(size=(h, w, 3))
                v /= np.linalg.norm(v, axis=-1, keepdims=True)
                v[0, 0] = 0
                np.save(root / split / "normal" / f"{i}.npy", v.astype(np.float32))
    return root


def write_office(root: Path, domains, sub: str, classes, per_class=5, seed=0) -> Path:
    """ROOT/<domain>/[<sub>/]<class>/*.jpg with tiny random JPEGs."""
    rng = np.random.default_rng(seed)
    for d in domains:
        for c in classes:
            folder = root / d / sub / c if sub else root / d / c
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    folder / f"frame_{k:04d}.jpg")
    return root


def write_lists(root: Path, list_dir: Path, domains, sub: str, classes) -> Path:
    """LibMTL list files <domain>_{train,val,test}.txt of a stratified split of the images."""
    list_dir.mkdir(parents=True, exist_ok=True)
    all_classes = read_class_names("officehome" if not sub else "office31")
    for d in domains:
        entries = scan_class_folders(root, d, sub, all_classes)
        for split, items in stratified_split(entries, 7).items():
            (list_dir / f"{d}_{split}.txt").write_text(
                "".join(f"{e.path} {e.label}\n" for e in items))
    return list_dir


def make(name: str, root: Path, **options):
    cls = BENCHMARKS.get(name)
    defaults = {"weights": "none", "backbone": "resnet18", "workers": 1}
    if name in ("office31", "officehome"):
        defaults.update(workers=0, image_size=32)
    config = cls.Config(**{**defaults, **options})
    config.validate()
    return cls(config, root, CPU)


@pytest.fixture
def nyu(tmp_path):
    return write_dense(tmp_path / "nyu")


@pytest.fixture
def office31(tmp_path):
    return write_office(tmp_path / "o31", O31, "images", read_class_names("office31")[:3])


# --------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_nyuv2_end_to_end_with_augmentation(nyu, tmp_path):
    (outcome,) = tiny_run("nyuv2", "ew", tmp_path / "out", [*TINY_DENSE, "data.augment=true"],
                          data_root=str(nyu))
    assert outcome.status == "complete", outcome.reason
    records = read_records(outcome.run_dir)
    assert [r["split"] for r in records] == ["train", "val", "test"]
    assert records[0]["steps"] == 2
    metrics = records[2]["metrics"]
    assert set(metrics) == {"seg", "depth", "normal"}
    assert set(metrics["seg"]) == {"miou", "pixacc"}
    assert set(metrics["depth"]) == {"abs_err", "rel_err"}
    assert set(metrics["normal"]) == {"angle_mean", "angle_median", "within_11.25",
                                      "within_22.5", "within_30"}
    # The held-out val split (2 train-folder items) differs from the test split.
    assert records[1]["metrics"] != records[2]["metrics"]
    record = json.loads((outcome.run_dir / "benchmark.json").read_text())
    assert record["protocol"] == "holdout" and len(record["val_indices"]) == 2


@pytest.mark.slow
def test_cityscapes_label7_libmtl_protocol_end_to_end(tmp_path):
    root = write_dense(tmp_path / "cs", classes=7, normals=False, label_dir="label_7")
    (outcome,) = tiny_run("cityscapes", "ew", tmp_path / "out",
                          [*TINY_DENSE, "data.protocol=libmtl"], data_root=str(root))
    assert outcome.status == "complete", outcome.reason
    records = read_records(outcome.run_dir)
    assert set(records[2]["metrics"]) == {"seg", "depth"}
    # libmtl: val is the test split, so both evaluations are identical.
    assert records[1]["metrics"] == records[2]["metrics"]
    bench = make("cityscapes", root, protocol="libmtl")
    record = bench.extra_record()
    assert record["selection_on_test"] is True and record["label_folder"] == "label_7"
    assert bench.split_size("train") == 8 and bench.split_size("val") == 4


@pytest.mark.slow
def test_office31_end_to_end_generated_split(office31, tmp_path):
    (outcome,) = tiny_run("office31", "ew", tmp_path / "out", TINY_OFFICE,
                          data_root=str(office31))
    assert outcome.status == "complete", outcome.reason
    records = read_records(outcome.run_dir)
    assert set(records[2]["metrics"]) == set(O31)
    assert all(set(m) == {"acc"} for m in records[2]["metrics"].values())
    summary = read_summary(outcome.run_dir)
    assert summary["setting"] == "domain shift"
    record = json.loads((outcome.run_dir / "benchmark.json").read_text())
    assert sum(len(v) for v in record["split"]["amazon"].values()) == 15


@pytest.mark.slow
def test_officehome_cli_with_list_files(tmp_path):
    classes = read_class_names("officehome")[:2]
    root = write_office(tmp_path / "oh", OH, "", classes, per_class=5)
    lists = write_lists(root, tmp_path / "lists", OH, "", classes)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    sets = [a for s in [*TINY_OFFICE[:-1], "data.workers=1", f"data.split_dir={lists}"]
            for a in ("--set", s)]
    proc = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "run", "-b", "officehome",
                           "-m", "ew", "-s", "0", "--data-root", str(root), "--out",
                           str(tmp_path / "out"), "--no-progress", *sets],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (summary_path,) = (tmp_path / "out" / "officehome" / "ew").glob("seed0-*/summary.json")
    assert json.loads(summary_path.read_text())["status"] == "complete"
    records = read_records(summary_path.parent)
    assert set(records[2]["metrics"]) == set(OH)


# --------------------------------------------------------------------------- dense data

def test_holdout_split_is_deterministic_and_recorded(nyu):
    a, b = make("nyuv2", nyu, val_fraction=0.25), make("nyuv2", nyu, val_fraction=0.25)
    val = a.extra_record()["val_indices"]
    assert val == b.extra_record()["val_indices"] and len(val) == 2
    train = a.index["train"][1].tolist()
    assert sorted(train + val) == list(range(8))
    assert a.extra_record()["selection_on_test"] is False
    others = {tuple(make("nyuv2", nyu, val_fraction=0.25, split_seed=s).extra_record()["val_indices"])
              for s in range(1, 6)}
    assert others - {tuple(val)}


def test_dense_arrays_become_nchw_tensors(nyu):
    bench = make("nyuv2", nyu, protocol="libmtl")
    batch = next(bench.batches("test", 3))
    assert batch.inputs.shape == (3, 3, *DENSE_SIZE) and batch.inputs.dtype == torch.float32
    assert batch.targets["seg"].shape == (3, *DENSE_SIZE) and batch.targets["seg"].dtype == torch.long
    assert batch.targets["depth"].shape == (3, 1, *DENSE_SIZE)
    assert batch.targets["normal"].shape == (3, 3, *DENSE_SIZE)
    on_disk = np.load(nyu / "val" / "image" / "0.npy")
    assert torch.allclose(batch.inputs[0], torch.from_numpy(on_disk).permute(2, 0, 1).float())
    label = np.load(nyu / "val" / "label" / "0.npy")
    assert torch.equal(batch.targets["seg"][0], torch.from_numpy(label).long())


def test_resize_at_load_keeps_labels_exact(nyu):
    bench = make("nyuv2", nyu, height=12, width=16, protocol="libmtl")
    batch = next(bench.batches("test", 4))
    assert batch.inputs.shape[-2:] == (12, 16)
    assert set(batch.targets["seg"].unique().tolist()) <= set(range(-1, 13))
    norms = batch.targets["normal"].norm(dim=1)
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0))
    assert bench.extra_record()["size_on_disk"] == list(DENSE_SIZE)


def test_departures_warn_by_default_and_fail_when_strict(nyu, caplog):
    with caplog.at_level(logging.WARNING):
        bench = make("nyuv2", nyu)
    departures = bench.extra_record()["data_departures"]
    assert any("8 items, the official dataset has 795" in m for m in departures)
    assert any("(288, 384)" in m for m in departures)
    assert "official dataset has 795" in caplog.text
    with pytest.raises(DataError, match=r"train: 8 items, the official dataset has 795.*strict"):
        make("nyuv2", nyu, strict=True)


def _break_missing_folder(root):
    (root / "train" / "depth" / "0.npy").unlink()
    for f in (root / "train" / "depth").iterdir():
        f.unlink()
    (root / "train" / "depth").rmdir()


def _break_gap(root):
    for kind in ("image", "label", "depth", "normal"):
        (root / "train" / kind / "3.npy").rename(root / "train" / kind / "9.npy")


def _save(root, rel, array):
    np.save(root / rel, array)


BROKEN_DENSE = {
    "missing folder": (_break_missing_folder, r"missing folder .*train/depth/"),
    "gap in indices": (_break_gap, r"train/image: indices are not contiguous from 0; missing 3\.npy"),
    "stray file": (lambda r: _save(r, "train/label/extra.npy", np.zeros((2, 2))),
                   r"train/label/extra\.npy: unexpected entry"),
    "count mismatch": (lambda r: (r / "val" / "depth" / "3.npy").unlink(),
                       r"val: the folders hold different numbers of items"),
    "wrong shape": (lambda r: _save(r, "train/image/2.npy", np.zeros(DENSE_SIZE)),
                    r"train/image/2\.npy: shape \(24, 32\); expected a image array of shape \(H, W, 3\)"),
    "wrong dtype": (lambda r: _save(r, "train/depth/1.npy", np.zeros((*DENSE_SIZE, 1), dtype=bool)),
                    r"train/depth/1\.npy: dtype bool; expected a real numeric depth array"),
    "nan": (lambda r: _save(r, "val/image/1.npy", np.full((*DENSE_SIZE, 3), np.nan)),
            r"val/image/1\.npy: the image array contains NaN"),
    "label range": (lambda r: _save(r, "train/label/5.npy", np.full(DENSE_SIZE, 13.0)),
                    r"train/label/5\.npy: label values 13 out of range; expected 0…12 or -1"),
    "fractional label": (lambda r: _save(r, "train/label/5.npy", np.full(DENSE_SIZE, 2.5)),
                         r"train/label/5\.npy: non-integer label values"),
    "0-255 image": (lambda r: _save(r, "train/image/4.npy", np.full((*DENSE_SIZE, 3), 200.0)),
                    r"train/image/4\.npy: image values up to 200; expected values in \[0, 1\]"),
    "size differs": (lambda r: _save(r, "train/normal/6.npy", np.zeros((12, 16, 3))),
                     r"train/normal/6\.npy: size \(12, 16\); expected \(24, 32\)"),
    "truncated": (lambda r: (r / "train/depth/2.npy").write_bytes(
                      (r / "train/depth/2.npy").read_bytes()[:200]),
                  r"train/depth/2\.npy: cannot be read as a \.npy array"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_DENSE))
def test_dense_reader_errors_name_the_file(nyu, case):
    breaker, message = BROKEN_DENSE[case]
    breaker(nyu)
    with pytest.raises(DataError, match=message):
        make("nyuv2", nyu)


def test_missing_data_root_is_refused(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        make("cityscapes", tmp_path / "absent")
    with pytest.raises(DataError, match=r"missing folder .*label_7/ or .*label/"):
        make("cityscapes", write_dense(tmp_path / "cs", classes=7, normals=False, label_dir="seg"))


def test_bad_dense_options_are_refused():
    cfg = BENCHMARKS.get("nyuv2").Config(height=100)
    with pytest.raises(ConfigError, match="set both"):
        cfg.validate()
    with pytest.raises(ConfigError, match="data.protocol"):
        BENCHMARKS.get("nyuv2").Config(protocol="test").validate()


def test_scale_crop_flip():
    b, h, w = 6, 12, 16
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(b, 1, h, w) + 0.5
    normal = torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1)
    label = torch.randint(-1, 5, (b, h, w), dtype=torch.int16)
    batch = {"image": torch.rand(b, 3, h, w), "label": label, "depth": depth, "normal": normal}
    out = scale_crop_flip(batch, torch.Generator().manual_seed(0))
    again = scale_crop_flip(batch, torch.Generator().manual_seed(0))
    assert all(torch.equal(out[k], again[k]) for k in batch)
    assert all(out[k].shape == batch[k].shape and out[k].dtype == batch[k].dtype for k in batch)
    assert set(out["label"].unique().tolist()) <= set(label.unique().tolist())
    # Scale 1 only: the output is the input or its mirror with the normal's x negated.
    out = scale_crop_flip(batch, g, scales=(1.0,))
    flipped = 0
    for s in range(b):
        if torch.equal(out["depth"][s], depth[s]):
            assert torch.equal(out["normal"][s], normal[s])
        else:
            flipped += 1
            assert torch.equal(out["depth"][s], depth[s].flip(-1))
            assert torch.equal(out["label"][s], label[s].flip(-1))
            assert torch.allclose(out["normal"][s, 0], -normal[s, 0].flip(-1))
            assert torch.allclose(out["normal"][s, 1:], normal[s, 1:].flip(-1))
    assert 0 < flipped < b
    # Scale 1.5: nearest-neighbour depth, divided by the scale.
    out = scale_crop_flip(batch, g, scales=(1.5,))
    for s in range(b):
        values = set(torch.round(depth[s] * 1e4).flatten().tolist())
        assert set(torch.round(out["depth"][s] * 1.5 * 1e4).flatten().tolist()) <= values


# --------------------------------------------------------------------------- office data

def test_label_order_is_the_reference_lists_order():
    o31, oh = read_class_names("office31"), read_class_names("officehome")
    assert len(o31) == 31 and len(set(o31)) == 31 and len(oh) == 65 and len(set(oh)) == 65
    assert o31[:4] == ("back_pack", "paper_notebook", "desktop_computer", "scissors")
    assert o31[30] == "punchers" and o31.index("mug") == 22
    assert oh[:3] == ("Calendar", "Postit_Notes", "Candles")
    assert oh[64] == "Trash_Can" and oh.index("Alarm_Clock") == 62
    assert list(o31) != sorted(o31) and list(oh) != sorted(oh)


def test_class_folders_are_labelled_in_reference_order(tmp_path):
    classes = read_class_names("office31")
    write_office(tmp_path, ["amazon"], "images", ["punchers", "back_pack", "mug"], per_class=1)
    labels = {Path(e.path).parent.name: e.label
              for e in scan_class_folders(tmp_path, "amazon", "images", classes)}
    assert labels == {"back_pack": 0, "mug": 22, "punchers": 30}


def test_split_counts_golden():
    assert split_counts(10) == (6, 2, 2)
    assert split_counts(5) == (3, 1, 1)   # 0.2 * 5 = 1
    assert split_counts(8) == (4, 2, 2)   # 1.6 rounds to 2
    assert split_counts(2) == (2, 0, 0)   # 0.4 rounds to 0
    assert split_counts(1) == (1, 0, 0)


def test_stratified_split_is_deterministic_and_stratified():
    entries = [Entry(f"d/c{c}/{i:03d}.jpg", c) for c, n in enumerate((10, 5, 8, 1)) for i in range(n)]
    a, b = stratified_split(entries, 3), stratified_split(entries[::-1], 3)
    assert a == b
    assert sorted(e.path for s in a.values() for e in s) == sorted(e.path for e in entries)
    for c, n in enumerate((10, 5, 8, 1)):
        counts = tuple(sum(e.label == c for e in a[s]) for s in ("train", "val", "test"))
        assert counts == split_counts(n)
    assert stratified_split(entries, 4) != a


def test_generated_split_is_recorded(office31):
    bench = make("office31", office31)
    record = bench.extra_record()
    assert record["split_source"].startswith("generated")
    lines = record["split"]["dslr"]["train"]
    assert len(lines) == 9 and all(line.startswith("dslr/images/") for line in lines)
    assert record["counts"]["amazon"] == {"train": 9, "val": 3, "test": 3}
    assert make("office31", office31).extra_record()["split"] == record["split"]


def test_multi_input_epochs_cycle_the_smaller_domains(tmp_path):
    classes = read_class_names("office31")[:2]
    root = tmp_path / "o"
    write_office(root, ["amazon"], "images", classes, per_class=10)
    write_office(root, ["dslr", "webcam"], "images", classes, per_class=5, seed=1)
    bench = make("office31", root)
    assert bench.batches_per_epoch("train", 4) == 3    # amazon: 12 train images
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = list(bench.batches("train", 4, g1))
    second = list(bench.batches("train", 4, g2))
    assert len(first) == 3
    for x, y in zip(first, second, strict=True):
        assert set(x.inputs) == set(O31)
        assert all(v.shape == (4, 3, 32, 32) for v in x.inputs.values())
        assert all(torch.equal(x.targets[t], y.targets[t]) for t in O31)
        assert all(torch.equal(x.inputs[t], y.inputs[t]) for t in O31)
    evaluation = list(bench.batches("test", 2))
    # test: amazon 4 images, dslr and webcam 2 each -> two steps, the second amazon only.
    assert [sorted(b.inputs) for b in evaluation] == [sorted(O31), ["amazon"]]
    with pytest.raises(ConfigError, match="train.batch_size=7 exceeds the 6 images of the dslr"):
        list(bench.batches("train", 7, g1))
    with pytest.raises(ConfigError, match="train.batch_size=1: .*BatchNorm"):
        list(bench.batches("train", 1, g1))


def _list_dir(root: Path, tmp: Path) -> Path:
    return write_lists(root, tmp / "lists", O31, "images", read_class_names("office31")[:3])


def _edit_list(path: Path, old: str | None, new: str) -> None:
    text = path.read_text()
    path.write_text(text.replace(old, new, 1) if old else text + new)


BROKEN_LISTS = {
    "malformed": (lambda lists, r: _edit_list(lists / "dslr_val.txt", None, "just_a_path.jpg\n"),
                  r"dslr_val\.txt:4: malformed line 'just_a_path\.jpg'"),
    "label not int": (lambda lists, r: _edit_list(lists / "dslr_val.txt", " 0\n", " zero\n"),
                      r"dslr_val\.txt:1: label 'zero' is not an integer"),
    "label range": (lambda lists, r: _edit_list(lists / "webcam_test.txt", None,
                                            "webcam/images/back_pack/frame_0000.jpg 31\n"),
                    r"webcam_test\.txt:4: label 31 out of range; expected 0…30"),
    "outside root": (lambda lists, r: _edit_list(lists / "amazon_train.txt", None, "../secret.jpg 0\n"),
                     r"amazon_train\.txt:10: path '\.\./secret\.jpg' points outside the data root"),
    "absolute": (lambda lists, r: _edit_list(lists / "amazon_train.txt", None, "/etc/x.jpg 0\n"),
                 r"amazon_train\.txt:10: path '/etc/x\.jpg' points outside the data root"),
    "missing image": (lambda lists, r: _edit_list(lists / "amazon_val.txt", None,
                                              "amazon/images/mug/frame_0001.jpg 22\n"),
                      r"amazon_val\.txt:4: image .*amazon/images/mug/frame_0001\.jpg does not exist"),
    "label vs folder": (lambda lists, r: _edit_list(lists / "amazon_val.txt", " 0\n", " 1\n"),
                        r"amazon_val\.txt:1: label 1 \(paper_notebook\) but the image is in "
                        r"folder 'back_pack', class 0"),
    "missing list": (lambda lists, r: (lists / "webcam_val.txt").unlink(),
                     r"missing split list .*webcam_val\.txt"),
    "overlap": (lambda lists, r: _edit_list(lists / "dslr_test.txt", None,
                                        (lists / "dslr_train.txt").read_text().splitlines()[0] + "\n"),
                r"dslr/images/\S+ is in both the train and the test list of dslr"),
    "not an image": (lambda lists, r: (r / "webcam/images/back_pack/frame_0002.jpg").write_text("hello"),
                     r"webcam/images/back_pack/frame_0002\.jpg: not a readable image"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_LISTS))
def test_list_file_errors_name_file_and_line(office31, tmp_path, case):
    lists = _list_dir(office31, tmp_path)
    breaker, message = BROKEN_LISTS[case]
    breaker(lists, office31)
    with pytest.raises(DataError, match=message):
        make("office31", office31, split_dir=str(lists))


def test_list_counts_warn_and_fail_when_strict(office31, tmp_path):
    lists = _list_dir(office31, tmp_path)
    bench = make("office31", office31, split_dir=str(lists))
    record = bench.extra_record()
    assert any("amazon_train.txt: 9 items, the official dataset has 1680" in m
               for m in record["data_departures"])
    assert set(record["split_files_sha256"]) == {f"{d}_{s}.txt" for d in O31
                                                 for s in ("train", "val", "test")}
    with pytest.raises(DataError, match="official dataset has 1680.*strict"):
        make("office31", office31, split_dir=str(lists), strict=True)


def test_image_folder_errors(office31):
    (office31 / "dslr" / "images" / "not_a_class").mkdir()
    with pytest.raises(DataError, match=r"unknown class folder 'not_a_class'"):
        make("office31", office31)
    (office31 / "dslr" / "images" / "not_a_class").rmdir()
    for f in sorted((office31 / "webcam").rglob("*.jpg"))[2:]:
        f.unlink()
    with pytest.raises(DataError, match=r"webcam: the generated split leaves no val or test images"):
        make("office31", office31)
    for f in sorted((office31 / "webcam").rglob("*.jpg")):
        f.unlink()
    with pytest.raises(DataError, match=r"webcam/images: no images found"):
        make("office31", office31)


def test_truncated_image_fails_its_batch_naming_the_file(office31):
    bench = make("office31", office31, workers=1)   # decoded in a worker process
    target = office31 / bench.splits["webcam"]["test"][0].path
    target.write_bytes(target.read_bytes()[:300])   # the header still opens
    with pytest.raises(DataError, match=rf"{target.name}: cannot be decoded"):
        list(bench.batches("test", 4))


# --------------------------------------------------------------------------- networks

def test_imagenet_weights_missing_gives_a_clear_error(office31, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(DataError, match=r"resnet18-f37072fd\.pth\); nothing is downloaded.*"
                                        r"data\.weights=none"):
        make("office31", office31, weights="imagenet")


def test_weights_file_is_loaded_and_checked(office31, tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    good = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), good)
    bench = make("office31", office31, weights=str(good))
    encoder = bench.make_encoder()
    assert torch.equal(encoder.trunk[0][0].weight, reference.conv1.weight)
    assert torch.equal(encoder.trunk[4][1].conv2.weight, reference.layer4[1].conv2.weight)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"junk\.pth: cannot be read as a PyTorch state dict"):
        make("office31", office31, weights=str(tmp_path / "junk.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DataError,
                       match=r"does not fit a torchvision resnet18 \(missing: .*wrong shape: conv1"):
        make("office31", office31, weights=str(tmp_path / "other.pth"))
    with pytest.raises(DataError, match="no such file"):
        make("office31", office31, weights=str(tmp_path / "absent.pth"))


def test_dense_networks_have_output_stride_8():
    from benchmarks._models import ASPPHead, OfficeEncoder, resnet_trunk

    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        z50 = resnet_trunk("resnet50", dilated=True, state=None).eval()(x)
        z18 = resnet_trunk("resnet18", dilated=True, state=None).eval()(x)
        head = ASPPHead(512, 13, (12, 24, 36), 256).eval()
        assert z50.shape == (2, 2048, 8, 12) and z18.shape == (2, 512, 8, 12)
        assert head(z18).shape == (2, 13, 8, 12)
        assert OfficeEncoder("resnet18", None).eval()(torch.rand(2, 3, 32, 32)).shape == (2, 512)
