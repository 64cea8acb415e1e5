"""The paper's datasets: preparation from tiny replicas of the original
formats (real file layouts and annotation files), cropping, splits, class
counts, transforms, clear errors, and the `data` command."""
import argparse
import json
import shutil
import tarfile
import types

import numpy as np
import pytest
import torch
from PIL import Image

from packnet_edu import vgg_data as vd
from packnet_edu.train import Config, load_tasks

from replicas import BOX_COLOUR, make_cubs_replica, make_flowers_replica, make_replicas

COUNTS = {"imagenet": (1000, 1000, 1000, 1000), "cubs": (200, 200, 200, 200),
          "cars": (196, 196, 196, 196), "flowers": (102, 102, 102, 102)}   # classes, train, val, test


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    src_root = tmp_path_factory.mktemp("src")
    src = make_replicas(src_root)
    root = tmp_path_factory.mktemp("data")
    for name in vd.NAMES:
        vd.prepare(name, src[name], root)
    return src, root


def assert_box_only(im):
    """Every edge row and column is the box's colour: not one pixel of the
    noise around the box was kept (noise averages 60; JPEG blurs edges a little)."""
    a = np.asarray(im, dtype=float)
    for edge in (a[0], a[-1], a[:, 0], a[:, -1]):
        assert np.abs(edge.mean(0) - BOX_COLOUR).max() < 100   # noise: ~190 away


def _parser():
    p = argparse.ArgumentParser()
    vd.add_data_command(p.add_subparsers(dest="command", required=True))
    return p


def test_class_counts_and_split_sizes(prepared):
    _, root = prepared
    for name, (k, ntr, nva, nte) in COUNTS.items():
        meta = vd.read_meta(name, root)
        assert len(meta["classes"]) == k == vd.DATASETS[name].num_classes
        assert meta["counts"] == {"train": ntr, "val": nva, "test": nte}
    assert vd.read_meta("imagenet", root)["classes"][:2] == ["tench", "goldfish"]   # index order of the weights
    assert vd.read_meta("flowers", root)["classes"][0] == "pink primrose"


def test_cropped_to_bounding_boxes(prepared):
    src, root = prepared
    cub = src["cubs"]
    paths = dict(l.split() for l in (cub / "images.txt").read_text().splitlines())
    boxes = {l.split()[0]: [float(v) for v in l.split()[1:]] for l in (cub / "bounding_boxes.txt").read_text().splitlines()}
    by_name = {paths[i].split("/")[1]: boxes[i] for i in paths}
    files = sorted((root / "cubs").glob("*/*/*.jpg"))
    assert len(files) == 600
    for f in files[::7]:
        im = Image.open(f)
        x, y, w, h = by_name[f.name]
        assert im.size == (round(w), round(h))
        assert_box_only(im)
    from scipy.io import loadmat
    annos = loadmat(src["cars"] / "devkit" / "cars_train_annos.mat", squeeze_me=True)["annotations"]
    box = {str(a["fname"]): (int(a["bbox_x1"]), int(a["bbox_y1"]), int(a["bbox_x2"]), int(a["bbox_y2"])) for a in annos}
    for f in sorted((root / "cars").glob("train/*/*.jpg"))[::9] + sorted((root / "cars").glob("val/*/*.jpg"))[::9]:
        x1, y1, x2, y2 = box[f.name]
        im = Image.open(f)
        assert im.size == (x2 - x1 + 1, y2 - y1 + 1)      # 1-based inclusive corners
        assert_box_only(im)


def test_splits_follow_the_annotation_files(prepared):
    src, root = prepared
    cub = src["cubs"]
    paths = dict(l.split() for l in (cub / "images.txt").read_text().splitlines())
    flag = dict(l.split() for l in (cub / "train_test_split.txt").read_text().splitlines())
    label = dict(l.split() for l in (cub / "image_class_labels.txt").read_text().splitlines())
    test_names = {paths[i].split("/")[1] for i in paths if flag[i] == "0"}
    train_names = {paths[i].split("/")[1] for i in paths if flag[i] == "1"}
    got = {s: {f.name for f in (root / "cubs" / s).glob("*/*.jpg")} for s in vd.SPLITS}
    assert got["test"] == test_names
    assert got["train"] | got["val"] == train_names and not got["train"] & got["val"]
    # labels: the class folder's index is the annotated class
    task = vd.load_image_task("cubs", root, image_size=32)
    name_label = {paths[i].split("/")[1]: int(label[i]) - 1 for i in paths}
    for path, y in task.train.samples + task.test.samples:
        assert y == name_label[path.rsplit("/", 1)[1]]
    # flowers: the official ids
    from scipy.io import loadmat
    setid = loadmat(src["flowers"] / "setid.mat", squeeze_me=True)
    labels = loadmat(src["flowers"] / "imagelabels.mat", squeeze_me=True)["labels"]
    fl = vd.load_image_task("flowers", root, image_size=32)
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        samples = getattr(fl, split).samples
        assert sorted(p.rsplit("/", 1)[1] for p, _ in samples) == sorted(f"image_{i:05d}.jpg" for i in setid[key])
        assert all(y == labels[int(p[-9:-4]) - 1] - 1 for p, y in samples)
    # the validation split is fixed by the seed
    again = vd.prepare_cubs(cub, root / "again")
    assert {f.name for f in (again / "val").glob("*/*.jpg")} == got["val"]


def test_loaders_and_paper_transforms(prepared):
    _, root = prepared
    tasks = load_tasks(Config(tasks=("cubs", "flowers"), data_root=str(root), model="vgg16"))
    assert [t.num_classes for t in tasks] == [200, 102]
    kinds = lambda tf: [type(s).__name__ for s in tf.transforms]
    # the default path: uint8 tensors through v2 transforms (normalised later, on the device)
    assert kinds(tasks[0].train.transform) == ["Resize", "RandomHorizontalFlip"]
    assert tasks[0].train.transform.transforms[0].size == [224, 224]
    assert kinds(tasks[1].train.transform) == ["Resize", "RandomCrop", "RandomHorizontalFlip"]
    assert kinds(tasks[1].test.transform) == ["Resize", "CenterCrop"]
    assert tasks[1].test.transform.transforms[0].size == [256]
    # the reference path: PIL, ToTensor, Normalize
    ref = vd.image_transforms(cropped=False, train=False, decode="pil")
    assert kinds(ref) == ["Resize", "CenterCrop", "ToTensor", "Normalize"] and ref.transforms[0].size == 256
    small = vd.load_image_tasks(["imagenet", "cars"], root, image_size=32)
    for t in small:
        x, y = t.train[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
        assert torch.equal(t.test[0][0], t.test[0][0])        # evaluation is deterministic
    from packnet_edu.train import device_batches, loader_for
    x, y = next(iter(loader_for(small[1].train, Config(batch_size=4), train=True)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    x, y = next(device_batches(loader_for(small[1].train, Config(batch_size=4), train=True), "cpu"))
    assert x.dtype == torch.float32 and -2.2 < float(x.min()) and float(x.max()) < 2.7   # ImageNet-normalised


@pytest.mark.timeout(240)
def test_fast_and_gpu_decode_paths_match_the_reference(prepared, tmp_path):
    """Evaluation images (deterministic transforms) through the three decode
    paths: "cpu" and "gpu" (here decoded by libjpeg: the same code path, on the
    CPU) give the same uint8 image; normalised, it is the "pil" reference to
    within one grey level (resampling rounds differently)."""
    _, root = prepared
    test = {d: vd.load_image_task("imagenet", root, image_size=32, decode=d).test for d in vd.DECODERS}
    for d, ds in test.items():
        assert [p for p, _ in ds.samples] == [p for p, _ in test["pil"].samples]
    loaders = {d: vd.image_loader(ds, batch_size=8, device="cpu") for d, ds in test.items()}
    (xc, yc), (xg, yg), (xp, yp) = (next(iter(loaders[d])) for d in ("cpu", "gpu", "pil"))
    assert xc.dtype == xg.dtype == torch.uint8 and torch.equal(xc, xg) and torch.equal(yc, yg)
    assert torch.equal(yc, yp)
    one_level = 1 / (255 * min(vd.STD))
    assert (vd.normalize(xc) - xp).abs().max() <= one_level + 1e-5
    # through a worker process, the same batches (encoded images must cross the
    # process boundary: a batch that cannot be pickled is lost and the loader hangs)
    for d in ("cpu", "gpu"):
        alone = torch.cat([x for x, _ in vd.image_loader(test[d], batch_size=8)])
        worker = torch.cat([x for x, _ in vd.image_loader(test[d], batch_size=8, workers=1)])
        assert torch.equal(alone, worker), d
    # grayscale JPEGs and PNGs named .jpg (ImageNet has both) decode to RGB on every path
    d = tmp_path / "odd" / "c0"
    d.mkdir(parents=True)
    Image.fromarray(np.full((40, 50), 77, np.uint8)).save(d / "gray.jpg")
    Image.fromarray(np.full((40, 50, 3), 99, np.uint8)).save(d / "png.jpg", format="PNG")
    for decode in ("cpu", "gpu"):
        ds = vd._image_folder(tmp_path / "odd", cropped=True, train=False, size=16, decode=decode)
        x, _ = next(iter(vd.image_loader(ds, batch_size=2)))
        assert x.shape == (2, 3, 16, 16)
        assert set(x[1].unique().tolist()) <= {98, 99, 100}      # the PNG (files sort: gray, png)


def test_flowers_trains_on_train_and_val(prepared):
    _, root = prepared
    folders = vd.load_image_task("flowers", root, image_size=32)      # the splits as prepared
    trained = vd.load_image_tasks(["flowers"], root, image_size=32)[0]
    assert len(trained.train) == len(folders.train) + len(folders.val) == 204
    assert sorted(trained.train.samples) == sorted(folders.train.samples + folders.val.samples)
    assert trained.train.targets == [y for _, y in trained.train.samples]
    assert len(trained.val) == len(folders.val) and len(trained.test) == len(folders.test)
    cubs = vd.load_image_tasks(["cubs"], root, image_size=32)[0]       # the others: train only
    assert len(cubs.train) == vd.read_meta("cubs", root)["counts"]["train"]


def test_workers_follow_the_cores(monkeypatch):
    monkeypatch.setattr(vd, "usable_cores", lambda: 2)
    assert vd.resolve_workers(8) == 1 and vd.resolve_workers(0) == 0 and vd.resolve_workers(None) == 1
    monkeypatch.setattr(vd, "usable_cores", lambda: 16)
    assert vd.resolve_workers(8) == 8 and vd.resolve_workers(None) == 15
    monkeypatch.setattr(vd, "usable_cores", lambda: 1)
    assert vd.resolve_workers(None) == 0


def test_inputs_are_checked_before_any_data_loads(prepared, tmp_path, monkeypatch):
    """weights="imagenet" without the cached file and without internet: a
    one-line error naming --weights FILE, raised before a dataset is read."""
    import urllib.error
    import torch.hub
    _, root = prepared
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    class Offline:
        url = "https://example.invalid/vgg16-397923af.pth"
        def get_state_dict(self, progress=False):
            raise urllib.error.URLError("no network")
    monkeypatch.setattr(vd, "_imagenet_weights", lambda model: Offline())
    read = []
    monkeypatch.setattr(vd, "load_image_task", lambda *a, **k: read.append(a) or types.SimpleNamespace(name=a[0]))
    cfg = Config(tasks=("cubs", "cars"), data_root=str(root), model="vgg16", weights="imagenet")
    with pytest.raises(vd.WeightsError, match=r"download failed \(URLError\): pass --weights FILE.*or copy"):
        load_tasks(cfg)
    with pytest.raises(vd.WeightsError, match="weights file .*missing.pth not found: pass --weights FILE"):
        load_tasks(Config(tasks=("cubs",), data_root=str(root), model="vgg16", weights=str(tmp_path / "missing.pth")))
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "cubs").symlink_to(root / "cubs")
    with pytest.raises(vd.DatasetError, match="dataset 'cars' not found"):     # every dataset, before loading any
        load_tasks(Config(tasks=("cubs", "cars"), data_root=str(tmp_path / "partial"), model="vgg16"))
    assert read == []
    cached = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")                          # torchvision's cached file: no download tried
    load_tasks(cfg)
    assert len(read) == 2
    from packnet_edu.data import DataMissingError
    assert issubclass(vd.WeightsError, DataMissingError)      # the command line prints it as one line


def test_prepare_from_the_original_archive(tmp_path):
    base = make_cubs_replica(tmp_path / "src", num_classes=5)
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname="CUB_200_2011")
    out = vd.prepare_cubs(archive, tmp_path / "data")
    assert vd.read_meta("cubs", tmp_path / "data")["counts"] == {"train": 5, "val": 5, "test": 5}
    assert not any(p.name.startswith(".prepare") for p in (tmp_path / "data").iterdir())   # scratch removed
    assert out == tmp_path / "data" / "cubs"


def test_clear_errors(tmp_path, prepared):
    _, root = prepared
    with pytest.raises(vd.DatasetError, match="does not exist.*bounding_boxes.txt"):
        vd.prepare_cubs(tmp_path / "nowhere", tmp_path / "d")
    base = make_cubs_replica(tmp_path / "bad", num_classes=2)
    (base / "bounding_boxes.txt").write_text("1 2.0 3.0\n")
    with pytest.raises(vd.DatasetError, match="bounding_boxes.txt line 1.*5 fields"):
        vd.prepare_cubs(base, tmp_path / "d")
    base = make_cubs_replica(tmp_path / "bad2", num_classes=2)
    (base / "train_test_split.txt").unlink()
    with pytest.raises(vd.DatasetError, match="train_test_split.txt not found.*expected CUB_200_2011"):
        vd.prepare_cubs(base, tmp_path / "d")
    fl = make_flowers_replica(tmp_path / "fl", num_classes=3)
    (fl / "jpg" / "image_00002.jpg").unlink()
    with pytest.raises(vd.DatasetError, match="image 2 but .*image_00002.jpg is missing"):
        vd.prepare_flowers(fl, tmp_path / "d")
    (fl / "setid.mat").write_bytes(b"not a mat file")
    with pytest.raises(vd.DatasetError, match="setid.mat is not a readable MATLAB file"):
        vd.prepare_flowers(fl, tmp_path / "d")
    with pytest.raises(vd.DatasetError, match="no train/ and val/"):
        vd.prepare_imagenet(tmp_path / "fl", tmp_path / "d")   # a folder without train/ and val/
    with pytest.raises(vd.DatasetError, match="no folder .*data prepare cars"):
        vd.load_image_tasks(["cars"], tmp_path / "empty")
    with pytest.raises(vd.DatasetError, match="already exists.*--force"):
        vd.prepare_cubs(make_cubs_replica(tmp_path / "again", num_classes=2), root)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        vd.load_image_tasks(["svhn"], root)


def test_data_command(tmp_path, capsys):
    src = make_flowers_replica(tmp_path / "src", num_classes=4)
    args = _parser().parse_args(["data", "prepare", "flowers", "--src", str(src.parent), "--dst", str(tmp_path / "data")])
    assert args.func(args) == 0
    assert "4 classes, train 4, val 4, test 4" in capsys.readouterr().out
    args = _parser().parse_args(["data", "check", "--root", str(tmp_path / "data")])
    assert args.func(args) == 0
    assert "flowers" in capsys.readouterr().out
    args = _parser().parse_args(["data", "prepare", "cubs", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path)])
    with pytest.raises(SystemExit, match="error: cubs: source .* does not exist; expected CUB_200_2011"):
        args.func(args)
    args = _parser().parse_args(["data", "prepare", "cars", "--src", str(src), "--dst", str(tmp_path), "--download"])
    with pytest.raises(SystemExit, match="cannot download cars"):
        args.func(args)
    with pytest.raises(SystemExit):
        _parser().parse_args(["data", "prepare", "svhn", "--src", "x", "--dst", "y"])
