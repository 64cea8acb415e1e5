"""Tiny replicas of the paper's datasets in their *original* on-disk formats,
and a narrow VGG-16, so that the whole VGG-16 pipeline runs in CI on a CPU.

Each `make_<name>_replica(root)` writes a few generated images with the real
file layout and annotation files (text files for CUB-200-2011, MATLAB .mat
files for Stanford Cars and Flowers102, class folders for ImageNet) and
returns the folder to pass to `vgg_data.prepare_<name>(src, dst)`.

Every image is noise with a solid coloured rectangle exactly where its
bounding box says (`BOX_COLOUR`), so tests can check that cropping kept the
box and nothing else.

`tiny_vgg16` is VGG-16's layout (13 convolutions in five blocks, fc6, fc7,
one head per task) with every width divided by `div`: the code paths of the
full network at a thousandth of the cost.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .models import MultiHeadNet

BOX_COLOUR = (250, 20, 20)
PathLike = Union[str, Path]


def _image(rng: np.random.Generator, size: Tuple[int, int], box=None):
    """A PIL RGB image `size` = (width, height) of noise, with `box` (x0, y0, x1, y1) filled."""
    from PIL import Image
    w, h = size
    arr = rng.integers(0, 120, size=(h, w, 3), dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        arr[y0:y1, x0:x1] = BOX_COLOUR
    return Image.fromarray(arr)


def _random_box(rng, w: int, h: int) -> Tuple[int, int, int, int]:
    """A box covering roughly a quarter to a half of each side."""
    bw, bh = int(rng.integers(w // 4, w // 2 + 1)), int(rng.integers(h // 4, h // 2 + 1))
    x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
    return x0, y0, x0 + bw, y0 + bh


def _size(rng) -> Tuple[int, int]:
    return int(rng.integers(40, 72)), int(rng.integers(36, 64))


# ------------------------------------------------------------------ CUB-200-2011
def make_cubs_replica(root: PathLike, num_classes: int = 200, per_class: int = 3,
                      seed: int = 0) -> Path:
    """CUB_200_2011/ as its archive unpacks: images/<class>/<file>.jpg, images.txt,
    image_class_labels.txt, classes.txt, bounding_boxes.txt (x y w h, floats),
    train_test_split.txt (1 = train). One image per class is a test image."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "CUB_200_2011"
    (base / "images").mkdir(parents=True, exist_ok=True)
    images, labels, classes, boxes, split = [], [], [], [], []
    image_id = 0
    for c in range(1, num_classes + 1):
        cname = f"{c:03d}.Bird_{c}"
        classes.append(f"{c} {cname}")
        (base / "images" / cname).mkdir(exist_ok=True)
        for i in range(per_class):
            image_id += 1
            w, h = _size(rng)
            x0, y0, x1, y1 = _random_box(rng, w, h)
            rel = f"{cname}/Bird_{c}_{i:04d}.jpg"
            _image(rng, (w, h), (x0, y0, x1, y1)).save(base / "images" / rel, quality=95, subsampling=0)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            boxes.append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
            split.append(f"{image_id} {0 if i == per_class - 1 else 1}")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("classes.txt", classes), ("bounding_boxes.txt", boxes),
                        ("train_test_split.txt", split)):
        (base / name).write_text("\n".join(lines) + "\n")
    return base


# ------------------------------------------------------------------ Stanford Cars
def _annotations(records: List[dict]) -> np.ndarray:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    arr = np.zeros((1, len(records)), dtype=[(f, "O") for f in fields])
    for i, r in enumerate(records):
        for f in fields:   # as MATLAB stores them: 1x1 numeric arrays, a char array
            arr[0, i][f] = np.array([r[f]]) if f == "fname" else np.array([[r[f]]], dtype=np.uint16)
    return arr


def make_cars_replica(root: PathLike, num_classes: int = 196, train_per_class: int = 2,
                      test_per_class: int = 1, seed: int = 0) -> Path:
    """stanford_cars/ in torchvision's layout of the original devkit:
    devkit/cars_meta.mat (class_names), devkit/cars_train_annos.mat and
    cars_test_annos_withlabels.mat (struct `annotations` with bbox_x1, bbox_y1,
    bbox_x2, bbox_y2 (1-based, inclusive), class (1-based), fname), cars_train/,
    cars_test/."""
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    base = Path(root) / "stanford_cars"
    for d in ("devkit", "cars_train", "cars_test"):
        (base / d).mkdir(parents=True, exist_ok=True)
    names = np.array([f"Make{c} Model/{c} {2000 + c % 13}" for c in range(1, num_classes + 1)], dtype=object)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names.reshape(1, -1)})
    for split, per_class, mat in (("train", train_per_class, base / "devkit" / "cars_train_annos.mat"),
                                  ("test", test_per_class, base / "cars_test_annos_withlabels.mat")):
        records, n = [], 0
        for c in range(1, num_classes + 1):
            for _ in range(per_class):
                n += 1
                w, h = _size(rng)
                x0, y0, x1, y1 = _random_box(rng, w, h)
                fname = f"{n:05d}.jpg"
                _image(rng, (w, h), (x0, y0, x1, y1)).save(base / f"cars_{split}" / fname, quality=95, subsampling=0)
                records.append(dict(bbox_x1=x0 + 1, bbox_y1=y0 + 1, bbox_x2=x1, bbox_y2=y1,
                                    **{"class": c}, fname=fname))
        order = rng.permutation(len(records))     # the real files are not sorted by class
        savemat(mat, {"annotations": _annotations([records[i] for i in order])})
    return base


# ------------------------------------------------------------------ Flowers102
def make_flowers_replica(root: PathLike, num_classes: int = 102, per_split: int = 1,
                         seed: int = 0) -> Path:
    """flowers-102/ as torchvision's Flowers102 downloads it: jpg/image_%05d.jpg,
    imagelabels.mat (labels 1..102) and setid.mat (trnid, valid, tstid, 1-based ids)."""
    from scipy.io import savemat
    rng = np.random.default_rng(seed)
    base = Path(root) / "flowers-102"
    (base / "jpg").mkdir(parents=True, exist_ok=True)
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    image_id = 0
    for c in range(1, num_classes + 1):
        for key in ids:
            for _ in range(per_split):
                image_id += 1
                labels.append(c)
                ids[key].append(image_id)
                _image(rng, _size(rng)).save(base / "jpg" / f"image_{image_id:05d}.jpg", quality=95)
    savemat(base / "imagelabels.mat", {"labels": np.array(labels, dtype=np.uint8 if num_classes < 256 else np.uint16).reshape(1, -1)})
    savemat(base / "setid.mat", {k: np.array(v, dtype=np.uint16).reshape(1, -1) for k, v in ids.items()})
    return base


# ------------------------------------------------------------------ ImageNet
def imagenet_wnids(num_classes: int) -> List[str]:
    return [f"n{10000000 + 37 * c:08d}" for c in range(num_classes)]


def make_imagenet_replica(root: PathLike, num_classes: int = 1000, train_per_class: int = 2,
                          val_per_class: int = 1, seed: int = 0) -> Path:
    """ILSVRC-2012 laid out by class (torchvision.datasets.ImageNet's unpacked
    layout): train/<wnid>/<wnid>_<n>.JPEG and val/<wnid>/ILSVRC2012_val_<n>.JPEG."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "imagenet"
    n = 0
    for wnid in imagenet_wnids(num_classes):
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            d = base / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                n += 1
                name = f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{n:08d}.JPEG"
                _image(rng, _size(rng)).save(d / name, quality=90)
    return base


BUILDERS = {"imagenet": make_imagenet_replica, "cubs": make_cubs_replica,
            "cars": make_cars_replica, "flowers": make_flowers_replica}


def make_replicas(root: PathLike, names: Sequence[str] = ("imagenet", "cubs", "cars", "flowers"),
                  num_classes: Union[None, int, Dict[str, int]] = None, seed: int = 0) -> Dict[str, Path]:
    """Replicas of several datasets under `root` (source folders for prepare)."""
    out = {}
    for name in names:
        kw = {}
        n = num_classes.get(name) if isinstance(num_classes, dict) else num_classes
        if n is not None:
            kw["num_classes"] = n
        out[name] = BUILDERS[name](Path(root), seed=seed, **kw)
    return out


# ------------------------------------------------------------------ a narrow VGG-16
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def tiny_vgg16(num_classes: Sequence[int], div: int = 16, batch_norm: bool = False,
               hidden: int = 256, pool: int = 1, **_ignored) -> MultiHeadNet:
    """VGG-16's layout, `div` times narrower: features (13 convolutions, 3x3,
    five max-pools), avgpool, flatten, fc = fc6, ReLU, Dropout, fc7, ReLU,
    Dropout, as `models.vgg16` builds it; one head per task."""
    from torchvision.models.vgg import make_layers
    cfg = [v if v == "M" else max(v // div, 2) for v in VGG16_CFG]
    features = make_layers(cfg, batch_norm=batch_norm)
    last = cfg[-2]
    trunk = nn.Sequential(OrderedDict(
        features=features, avgpool=nn.AdaptiveAvgPool2d(pool), flatten=nn.Flatten(),
        fc=nn.Sequential(nn.Linear(last * pool * pool, hidden), nn.ReLU(True), nn.Dropout(),
                         nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout())))
    return MultiHeadNet(trunk, hidden, num_classes)
