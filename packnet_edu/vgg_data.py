"""The paper's image datasets: preparation from the original files, and loaders.

    python -m packnet_edu data prepare cubs --src CUB_200_2011.tgz --dst DATA_ROOT
    python -m packnet_edu data check --root DATA_ROOT
    python -m packnet_edu run --config paper-vgg16 --data-root DATA_ROOT

`prepare_<name>(src, root)` reads a dataset as it is distributed (an archive,
or the folder it unpacks to) and writes `root/<name>/{train,val,test}/<class>/`
image folders plus `root/<name>/classes.json`:

- imagenet  ILSVRC-2012 laid out by class (train/<wnid>/, val/<wnid>/), or the
            official archives, unpacked with torchvision.datasets.ImageNet.
            test = the official validation set (the paper's ImageNet numbers).
- cubs      CUB-200-2011: each image cropped to its box in bounding_boxes.txt,
            train/test from train_test_split.txt.
- cars      Stanford Cars (devkit .mat files, as torchvision.datasets.StanfordCars
            reads them): each image cropped to its annotated box.
- flowers   Flowers102 with its official train/val/test split (setid.mat);
            `--download` fetches it with torchvision where there is internet.

Model selection must never look at test data, so every dataset gets a
validation split: Flowers102 has one; for the others a stratified fraction of
the training images is held out, fixed by a seed.

`load_image_tasks(names, root)` returns `data.Task`s with the paper's
transforms: cropped sets (cubs, cars) resized to 224x224; the others resized
to 256 and randomly cropped to 224 (centre crop for evaluation); random
left-right flips for training; Flowers trains on train+val, as the paper.
Images stay uint8 until the device (`image_loader`, `normalize`: ImageNet
normalisation there); `check_inputs` checks weights and datasets first.
"""
from __future__ import annotations

import argparse
import contextlib

import json
import os
import shutil
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .data import DataMissingError, Task
from .fileio import FolderLock, atomic_write, check_writable

# torchvision 0.29 announces that torchvision.io's image decoding will move to
# TorchCodec; it still works and is what the fast path uses (one warning per
# image would flood a training log). docs/paper_deviations.md notes it.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

PathLike = Union[str, Path]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".zip")
FORMAT_VERSION = 1


class DatasetError(DataMissingError):
    """A dataset folder that is missing or not in the expected format; the
    message says what was expected and how to make it."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    num_classes: int        # of the real dataset (replicas may have fewer)
    cropped: bool           # cropped to bounding boxes at prepare time; resized to 224x224
    val_fraction: Optional[float]   # held out of train; None: the official val split
    expected: str           # the source layout, for error messages


DATASETS: Dict[str, DatasetInfo] = {
    "imagenet": DatasetInfo("imagenet", "ImageNet", 1000, False, 0.01,
                            "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (ILSVRC-2012 laid out by class), or "
                            "ILSVRC2012_devkit_t12.tar.gz with ILSVRC2012_img_train.tar and "
                            "ILSVRC2012_img_val.tar (unpacked by torchvision.datasets.ImageNet)"),
    "cubs": DatasetInfo("cubs", "CUBS", 200, True, 0.1,
                        "CUB_200_2011/ (or CUB_200_2011.tgz) holding images/<class>/*.jpg, images.txt, "
                        "image_class_labels.txt, classes.txt, bounding_boxes.txt, train_test_split.txt"),
    "cars": DatasetInfo("cars", "Stanford Cars", 196, True, 0.1,
                        "stanford_cars/ holding devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
                        "cars_test_annos_withlabels.mat, cars_train/*.jpg and cars_test/*.jpg (torchvision's "
                        "StanfordCars layout; a folder with car_devkit.tgz, cars_train.tgz, cars_test.tgz "
                        "and cars_test_annos_withlabels.mat also works)"),
    "flowers": DatasetInfo("flowers", "Flowers", 102, False, None,
                           "flowers-102/ holding jpg/image_00001.jpg..., imagelabels.mat and setid.mat "
                           "(as torchvision.datasets.Flowers102 downloads it; 102flowers.tgz with the two "
                           ".mat files also works)"),
}
NAMES = tuple(DATASETS)


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: the VGG-16 pipeline's datasets are {', '.join(NAMES)}")
    return DATASETS[name]


# ------------------------------------------------------------------ transforms
# Three ways to turn a file into a training image, the same geometry in each:
#   "pil"  PIL decode, then Resize/Crop/Flip/ToTensor/Normalize on float images
#          (the reference; 3.7-4.2 ms per image per core measured on this project's CPU);
#   "cpu"  torchvision.io decoding and v2 transforms on uint8 tensors (the default;
#          1.4-2.0 ms): a uint8 batch travels to the device, 4x fewer bytes than
#          float32, and is normalised there (train.to_device);
#   "gpu"  workers only read the file's bytes; nvJPEG decodes a whole batch on
#          the GPU and the same v2 transforms run there (GpuDecode).
DECODERS = ("pil", "cpu", "gpu")
# Flowers is trained on its official train and val splits together (2,040
# images), as in the paper; its val split still selects the epoch (see
# docs/paper_deviations.md).
TRAIN_ON_TRAIN_AND_VAL = ("flowers",)


def image_transforms(cropped: bool, train: bool, size: int = 224, decode: str = "cpu"):
    """The paper's transforms. `size` is 224 for the paper; tests use less.
    decode="pil": PIL images to normalised float tensors; "cpu"/"gpu": uint8
    tensors (C, H, W) to uint8 tensors, normalised later on the device."""
    if decode not in DECODERS:
        raise ValueError(f"decode={decode!r}: choose one of {', '.join(DECODERS)}")
    if decode == "pil":
        from torchvision import transforms as T
    else:
        from torchvision.transforms import v2 as T
    big = round(size * 256 / 224)
    if cropped:
        steps = [T.Resize((size, size), antialias=True)]
    elif train:
        steps = [T.Resize(big, antialias=True), T.RandomCrop(size)]
    else:
        steps = [T.Resize(big, antialias=True), T.CenterCrop(size)]
    if train:
        steps.append(T.RandomHorizontalFlip())
    if decode == "pil":
        steps += [T.ToTensor(), T.Normalize(MEAN, STD)]
    return T.Compose(steps)


_NORM: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 3, H, W) in [0, 255] -> float32, ImageNet-normalised
    (what the "pil" path's ToTensor + Normalize compute), on x's device."""
    if x.device not in _NORM:     # made once per device: a copy to the GPU per batch would sync the host
        mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
        _NORM[x.device] = (mean.to(x.device), (1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255)).to(x.device))
    mean, inv_std = _NORM[x.device]
    return (x.float() - mean).mul_(inv_std)


def read_rgb(path: str) -> torch.Tensor:
    """A JPEG (or PNG: a few ImageNet "JPEG"s are) as uint8 RGB (3, H, W);
    grayscale and CMYK files are converted."""
    from torchvision.io import ImageReadMode, decode_image, read_file
    return decode_image(read_file(path), mode=ImageReadMode.RGB)


def read_bytes(path: str) -> np.ndarray:
    """A file's bytes as a 1-D uint8 array (GPU decoding: workers only read).
    A numpy array, not torchvision.io.read_file's tensor: that tensor's memory
    cannot be shared with the main process, and the batch would be lost."""
    return np.fromfile(path, dtype=np.uint8)


class GpuDecode:
    """Decode a batch of encoded images on the GPU (nvJPEG through
    torchvision.io.decode_jpeg) and apply `transform` there, image by image
    (sizes differ until the crop). Non-JPEG files are decoded on the CPU."""

    def __init__(self, transform):
        self.transform = transform
        self._streams: dict = {}

    def __call__(self, encoded: List[np.ndarray], device) -> torch.Tensor:
        device = torch.device(device)
        if device.type != "cuda":
            return self._decode(encoded, device)
        # nvJPEG writes from its own stream without waiting on the caller's
        # (pytorch/vision#9606): memory the training stream's queued kernels still
        # read could be handed to it. Decode on a stream of our own, after its
        # previous batch only; the caller's stream waits for the result.
        stream = self._streams.setdefault(device, torch.cuda.Stream(device))
        stream.synchronize()
        with torch.cuda.stream(stream):
            out = self._decode(encoded, device)
        current = torch.cuda.current_stream(device)
        current.wait_stream(stream)
        out.record_stream(current)
        return out

    def _decode(self, encoded: List[np.ndarray], device) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
        encoded = [torch.from_numpy(e) for e in encoded]
        jpeg = [i for i, e in enumerate(encoded) if e[:2].tolist() == [0xFF, 0xD8]]
        images: List[Optional[torch.Tensor]] = [None] * len(encoded)
        if jpeg:
            try:
                decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
            except RuntimeError:        # a file nvJPEG cannot read (e.g. CMYK): decode those on the CPU
                decoded = [None] * len(jpeg)
            for i, im in zip(jpeg, decoded):
                images[i] = im
        for i, im in enumerate(images):
            if im is None:
                images[i] = decode_image(encoded[i], mode=ImageReadMode.RGB).to(device)
        return torch.stack([self.transform(im) for im in images])


def _collate_encoded(batch):
    return [b[0] for b in batch], torch.tensor([b[1] for b in batch])


class DeviceDecodedLoader:
    """A DataLoader of encoded images whose batches are decoded on `device`."""

    def __init__(self, loader, decode: GpuDecode, device):
        self.loader, self.decode, self.device = loader, decode, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for encoded, y in self.loader:
            yield self.decode(encoded, self.device), y


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(requested: Optional[int]) -> int:
    """Loader processes: `requested`, at most one per usable core but one (the
    training loop keeps a core); None: that maximum. On a 2-core machine a
    preset's 8 workers become 1: more would only fight over the cores."""
    most = max(usable_cores() - 1, 0)
    return most if requested is None else min(int(requested), most)


def image_loader(dataset, batch_size: int = 32, shuffle: bool = False, workers: Optional[int] = 0,
                 seed: int = 0, device: str = "cpu", batch_sampler=None):
    """A DataLoader for an image-folder dataset: `workers` sized to the cores
    (resolve_workers), pinned memory for a GPU, uint8 batches; for a dataset
    of encoded images (decode="gpu") the batches are decoded on `device`.
    `batch_sampler` replaces batch_size/shuffle (distributed shards)."""
    from torch.utils.data import DataLoader
    n = resolve_workers(workers)
    gpu = getattr(dataset, "device_decode", None)
    kwargs = dict(num_workers=n, pin_memory=str(device).startswith("cuda"),
                  collate_fn=_collate_encoded if gpu else None)
    if n > 0:
        kwargs["prefetch_factor"] = 4       # batches ready per worker: rides out slow files
        # An evaluation loader (unshuffled) is built once per phase and read every
        # epoch: its workers persist. A training loader is rebuilt every epoch (its
        # seed), so persistent workers would only stay idle beside the new ones.
        kwargs["persistent_workers"] = not shuffle and batch_sampler is None
    if batch_sampler is not None:
        loader = DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                            generator=torch.Generator().manual_seed(seed) if shuffle else None, **kwargs)
    return DeviceDecodedLoader(loader, gpu, device) if gpu else loader


# ------------------------------------------------------------------ loading
def _image_folder(folder: Path, cropped: bool, train: bool, size: int, decode: str):
    from torchvision.datasets import ImageFolder
    tf = image_transforms(cropped, train, size, decode)
    if decode == "pil":
        return ImageFolder(folder, transform=tf, allow_empty=True)
    if decode == "cpu":
        return ImageFolder(folder, transform=tf, loader=read_rgb, allow_empty=True)
    ds = ImageFolder(folder, loader=read_bytes, allow_empty=True)
    ds.device_decode = GpuDecode(tf)
    return ds


def load_image_task(name: str, root: PathLike, image_size: int = 224, decode: str = "cpu") -> Task:
    """One prepared dataset (`root/name`) as a Task of ImageFolder datasets, its
    splits as prepared. `decode`: "cpu" (uint8 images, the default), "pil"
    (normalised float images, the reference path) or "gpu" (encoded bytes,
    decoded on the GPU by `image_loader`)."""
    meta = read_meta(name, root)
    folder = Path(root) / name
    d = info(name)
    sets = {}
    for split in SPLITS:
        ds = _image_folder(folder / split, d.cropped, split == "train", image_size, decode)
        if ds.classes != meta["dirs"]:
            raise DatasetError(f"{folder / split} has class folders that differ from {folder}/classes.json "
                               f"({len(ds.classes)} folders, {len(meta['dirs'])} listed): prepare it again "
                               f"with `python -m packnet_edu data prepare {name} --src ... --dst {root} --force`")
        if split == "train" and len(ds) == 0:
            raise DatasetError(f"{folder / split} holds no images: prepare {name} again")
        sets[split] = ds
    return Task(name, list(meta["classes"]), sets["train"], sets["val"], sets["test"])


def load_image_tasks(names: Sequence[str], root: PathLike, image_size: int = 224,
                     decode: str = "cpu") -> List[Task]:
    """The prepared datasets `names` under `root` (what `Config.data_root` names),
    as training uses them: Flowers trains on train+val (TRAIN_ON_TRAIN_AND_VAL)."""
    tasks = [load_image_task(n, root, image_size, decode) for n in names]
    for t in tasks:
        if t.name in TRAIN_ON_TRAIN_AND_VAL:
            t.train.samples = t.train.samples + t.val.samples    # val's images, train's transforms
            t.train.imgs, t.train.targets = t.train.samples, [y for _, y in t.train.samples]
    return tasks


# ------------------------------------------------------------------ inputs, checked first
class WeightsError(DataMissingError):
    """A network's starting weights cannot be had; the message says how to pass a file."""


def _imagenet_weights(model: str):
    from torchvision import models as tvm
    from .models import TORCHVISION
    return getattr(tvm, TORCHVISION[model][1]).IMAGENET1K_V1


def imagenet_weights_file(model: str = "vgg16") -> Path:
    """Where torchvision keeps `model`'s ImageNet weights once downloaded."""
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_imagenet_weights(model).url)


def check_weights(model: str, weights: Optional[str]) -> None:
    """Fail now, not after the datasets have loaded, if `model`'s start cannot
    be had: "imagenet" needs torchvision's cached file or a download that
    works; a file must exist. The error says how to pass --weights FILE."""
    from .models import TORCHVISION
    if weights is None or model not in TORCHVISION:
        return
    builder, _, title = TORCHVISION[model]
    save = (f"pass --weights FILE, FILE a {title} state dict saved on a machine with internet by "
            f"`torch.save(torchvision.models.{builder}(weights='IMAGENET1K_V1').state_dict(), FILE)`")
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise WeightsError(f"{title} weights file {weights} not found: {save}")
        if not zipfile.is_zipfile(weights):      # torch.save writes a zip archive: seconds, not after the data
            raise WeightsError(f"{weights} is not a file torch.save wrote (damaged or another format): {save}")
        problem = state_dict_mismatch(weights, builder)
        if problem:
            raise WeightsError(f"{weights} is not a {title} state dict ({problem}): {save}")
        return
    cached = imagenet_weights_file(model)
    if cached.is_file():
        return
    import urllib.error
    try:                               # downloads it into the cache where there is internet
        _imagenet_weights(model).get_state_dict(progress=False)
    except (OSError, urllib.error.URLError, RuntimeError) as err:
        raise WeightsError(f"weights='imagenet': {cached} is missing and the download failed "
                           f"({type(err).__name__}): {save}, or copy that file to {cached}") from None


def state_dict_mismatch(path: PathLike, builder: str) -> str:
    """Why the file at `path` is not a state dict of torchvision's `builder`
    network ("" if it is): it is read memory-mapped and compared, key by key and
    shape by shape, with the network built on the meta device, so no weight
    is read or allocated."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:   # a pickled whole model (weights_only refuses code), a zip of something else
        return f"torch.load with weights_only=True fails: {type(err).__name__}"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"it holds a {type(state).__name__}, not a dict of tensors"
    from torchvision import models as tvm
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in getattr(tvm, builder)(weights=None).state_dict().items()}
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        return ", ".join(f"{len(keys)} {what}, e.g. {keys[0]}" for keys, what in (
            (missing, f"of its {len(want)} tensors missing"), (unexpected, "unknown tensors")) if keys)
    shapes = [k for k in want if tuple(state[k].shape) != want[k]]
    if shapes:
        return f"{len(shapes)} tensors of another shape, e.g. {shapes[0]} {tuple(state[shapes[0]].shape)}, " \
               f"not {want[shapes[0]]}"
    return ""


def check_inputs(names: Sequence[str], root: Optional[PathLike], model: str, weights: Optional[str]) -> None:
    """Everything a run reads, checked in seconds before any of it is loaded:
    that the model suits the data, the starting weights, then each prepared
    dataset's classes.json (or, offline, the Fashion-MNIST folder the user named)."""
    from .config import check_model_inputs
    from .data import check_sources
    check_model_inputs(model, root, weights)
    check_weights(model, weights)
    if root is None:
        check_sources(names)
    else:
        for name in names:
            read_meta(name, root)


def read_meta(name: str, root: PathLike) -> dict:
    """root/name/classes.json, checked; a clear error if the dataset is not prepared."""
    info(name)
    folder = Path(root) / name
    how = (f"prepare it with `python -m packnet_edu data prepare {name} --src SOURCE --dst {root}`, "
           f"SOURCE being {DATASETS[name].expected}")
    if not folder.is_dir():
        raise DatasetError(f"dataset {name!r} not found: no folder {folder}; {how}")
    try:
        meta = json.loads((folder / "classes.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{folder} is not a prepared dataset ({folder}/classes.json unreadable: "
                           f"{type(err).__name__}); {how}") from None
    missing = [s for s in SPLITS if not (folder / s).is_dir()]
    if missing or meta.get("dataset") != name or len(meta.get("classes", [])) != len(meta.get("dirs", [None])):
        raise DatasetError(f"{folder} is incomplete or not {name!r} (missing {missing or 'nothing'}, "
                           f"classes.json for {meta.get('dataset')!r}); {how}")
    return meta


def check(root: PathLike, names: Sequence[str] = NAMES, sample: int = 16) -> Dict[str, dict]:
    """Counts of every prepared dataset under `root`, checked against its
    classes.json, with `sample` images of each split (evenly spaced, first and
    last included) opened and decoded. Raises DatasetError for a bad one."""
    out = {}
    for name in names:
        task = load_image_task(name, root)
        counts = {s: len(getattr(task, s)) for s in SPLITS}
        recorded = read_meta(name, root).get("counts")
        if recorded is not None and recorded != counts:
            raise DatasetError(f"{Path(root) / name} holds {counts} images but its classes.json recorded "
                               f"{recorded}: files were added or removed since it was prepared; prepare it "
                               "again with --force")
        for split in SPLITS:
            check_images(getattr(task, split).samples, sample, name, root)
        out[name] = {"classes": task.num_classes, **counts, "expected_classes": DATASETS[name].num_classes,
                     "opened": sum(min(sample, n) for n in counts.values())}
    return out


def check_images(samples: Sequence[Tuple[str, int]], sample: int, name: str, root: PathLike) -> None:
    """Open and decode `sample` evenly spaced images of (path, label) `samples`."""
    from PIL import Image
    if not samples or sample <= 0:
        return
    picks = sorted(set(np.linspace(0, len(samples) - 1, min(sample, len(samples))).round().astype(int)))
    for i in picks:
        path = samples[i][0]
        try:
            with Image.open(path) as im:
                im.load()
        except FileNotFoundError:
            raise DatasetError(f"{path} is missing (a link to an original image that was moved or deleted?): "
                               f"restore the source, then prepare {name} again with --force") from None
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetError(f"{path} is not a readable image ({type(err).__name__}: {err}): replace its "
                               f"original with a good copy, then prepare {name} again with --force") from None


# ------------------------------------------------------------------ sources
class _Source:
    """Where a dataset's files are: the given folder (or the named subfolder of
    it) and, if archives were given, what they unpack to."""

    def __init__(self, src: PathLike, subdir: str, name: str, scratch: Path, unpack: bool = True):
        self.src, self.name = Path(src), name
        if not self.src.exists():
            raise DatasetError(f"{name}: source {self.src} does not exist; expected {DATASETS[name].expected}")
        roots = []
        if self.src.is_dir():
            roots += [self.src / subdir, self.src]
        archives = [self.src] if self.src.is_file() else \
            sorted(p for p in self.src.iterdir() if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))
        if unpack and archives and not (self.src.is_dir() and (self.src / subdir).is_dir()):
            for a in archives:
                try:
                    shutil.unpack_archive(str(a), str(scratch))
                except (shutil.ReadError, ValueError, OSError, EOFError, tarfile.TarError,
                        zipfile.BadZipFile, zlib.error) as err:     # a truncated .tgz ends in EOFError
                    raise DatasetError(f"{name}: cannot unpack {a} ({type(err).__name__}: {err}): the archive "
                                       f"is damaged or incomplete; download it again. Expected "
                                       f"{DATASETS[name].expected}") from None
            roots += [scratch / subdir, scratch]
        self.roots = [r for r in roots if r.is_dir()]

    def find(self, rel: str, kind: str = "file") -> Path:
        for r in self.roots:
            p = r / rel
            if (p.is_file() if kind == "file" else p.is_dir()):
                return p
        raise DatasetError(f"{self.name}: {rel} not found in {self.src}; expected {DATASETS[self.name].expected}")


def _lines(path: Path, fields: int, what: str) -> List[List[str]]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != fields:
            raise DatasetError(f"{path} line {i}: expected {what} ({fields} fields), got {line!r}")
        rows.append(parts)
    return rows


def _number(text: str, kind, path: Path, image_id: str):
    try:
        return kind(text)
    except ValueError:
        raise DatasetError(f"{path}: {text!r} (for id {image_id}) is not a{'n integer' if kind is int else ' number'}") from None


def _cub_box(row: List[str], path: Path) -> Tuple[float, float, float, float]:
    """A bounding_boxes.txt row's (x, y, width, height): finite, with positive size."""
    x, y, w, h = (_number(v, float, path, row[0]) for v in row[1:])
    if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
        raise DatasetError(f"{path}: image {row[0]} has the box x={x} y={y} width={w} height={h}: "
                           "finite numbers with a positive width and height expected")
    return x, y, w, h


def _loadmat(path: Path, name: str) -> dict:
    from scipy.io import loadmat
    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as err:
        raise DatasetError(f"{name}: {path} is not a readable MATLAB file ({type(err).__name__}: {err}); "
                           f"expected {DATASETS[name].expected}") from None


def _mat_field(mat: dict, key: str, path: Path, name: str):
    if key not in mat:
        raise DatasetError(f"{name}: {path} has no '{key}' entry (it has {sorted(k for k in mat if not k.startswith('__'))}); "
                           f"expected {DATASETS[name].expected}")
    return mat[key]


def _carve_val(labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """A boolean mask: the held-out validation images, per class round(fraction * n),
    at least one where a class has two or more training images."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(max(int(round(fraction * len(idx))), 1 if len(idx) >= 2 else 0), len(idx) - 1)
        val[idx[:k]] = True
    return val


def _slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    return keep.strip("._")[:60] or "class"


# An item to write: (source image, class index, crop box (x0, y0, x1, y1) or None, output file name)
Item = Tuple[Path, int, Optional[Tuple[int, int, int, int]], str]


def _write(item: Item, split_dir: Path, dirs: List[str], link: bool) -> None:
    from PIL import Image, UnidentifiedImageError
    src, label, box, out_name = item
    out = split_dir / dirs[label] / out_name
    try:
        im = Image.open(src)      # reads the header only: a file that is not an image fails here
        if box is not None:
            im = im.convert("RGB")    # decodes: a truncated image fails here
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"{src} is not a readable image ({type(err).__name__}: {err}); replace it with "
                           "a good copy (or download the dataset again), then prepare again") from None
    if box is None:
        im.close()
        if link:
            os.symlink(os.path.abspath(src), out)
        else:
            shutil.copyfile(src, out)
        return
    with im:
        w, h = im.size
        x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
        if x1 <= x0 or y1 <= y0:
            raise DatasetError(f"{src}: bounding box {box} lies outside the {w}x{h} image")
        im.crop((x0, y0, x1, y1)).save(out.with_suffix(".jpg"), quality=95)


def _write_dataset(name: str, root: PathLike, classes: List[str], dirs: List[str],
                   splits: Dict[str, List[Item]], source: PathLike, seed: int, link: bool,
                   workers: int, force: bool, scratch: Path) -> Path:
    """Write root/name atomically: into a hidden folder, renamed at the end."""
    final = Path(root) / name
    empty = [s for s in SPLITS if not splits.get(s)]
    if empty:
        raise DatasetError(f"{name}: the source {source} lists no {' or '.join(empty)} images (empty or "
                           f"incomplete annotation files?); expected {DATASETS[name].expected}")
    _check_replaceable(name, final, force)
    tmp = scratch / "out"
    for split, items in splits.items():
        for d in dirs:
            (tmp / split / d).mkdir(parents=True, exist_ok=True)   # every class in every split
        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(lambda it: _write(it, tmp / split, dirs, link), items))
    counts = {s: len(items) for s, items in splits.items()}
    meta = {"format": FORMAT_VERSION, "dataset": name, "classes": classes, "dirs": dirs, "counts": counts,
            "cropped": DATASETS[name].cropped, "source": str(Path(source).resolve()), "seed": seed}
    atomic_write(tmp / "classes.json", json.dumps(meta, indent=1))
    _check_replaceable(name, final, force)       # again: it may have appeared while we worked
    if final.exists():                           # moved into the scratch folder, deleted with it,
        os.replace(final, scratch / "old")       # once the new one is in place
    os.replace(tmp, final)
    return final


def _check_replaceable(name: str, final: Path, force: bool) -> None:
    """`final` may be written: it does not exist, or it is a dataset this
    package prepared and `force` says to replace it. A folder of anything
    else is never replaced."""
    if not (final.exists() or final.is_symlink()):
        return
    try:
        ours = final.is_dir() and not final.is_symlink() and \
            json.loads((final / "classes.json").read_text()).get("dataset") == name
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise DatasetError(f"{final} already exists and is not a {name} dataset prepared by packnet_edu "
                           "(no matching classes.json): move it away or choose another --dst")
    if not force:
        raise DatasetError(f"{final} already exists: pass --force (force=True) to replace it")


def _check_request(name: str, src: PathLike, root: PathLike, val_fraction: Optional[float],
                   force: bool) -> None:
    """Refuse, before any work, a request that would lose data or cannot make
    a dataset: an output folder that is, holds, or lies inside the source
    (replacing it would delete the originals), one that exists and may not be
    replaced, or a --val-fraction outside (0, 1)."""
    if val_fraction is not None and not (isinstance(val_fraction, (int, float))
                                         and 0.0 < float(val_fraction) < 1.0):
        raise DatasetError(f"--val-fraction {val_fraction}: give the share of each class's training images "
                           "to hold out for validation, a number between 0 and 1 (exclusive), e.g. 0.1")
    source, final = Path(src).resolve(), (Path(root) / name).resolve()
    if source == final or source in final.parents or final in source.parents:
        raise DatasetError(f"{name}: the source {src} and the output {Path(root) / name} overlap, so preparing "
                           "could overwrite or delete the original files: choose a --dst outside the source "
                           "(and not inside it)")
    _check_replaceable(name, Path(root) / name, force)


def _with_val(name: str, train: List[Item], val_fraction: Optional[float], seed: int) -> Tuple[List[Item], List[Item]]:
    frac = DATASETS[name].val_fraction if val_fraction is None else val_fraction
    held = _carve_val([it[1] for it in train], frac, seed)
    return [it for it, v in zip(train, held) if not v], [it for it, v in zip(train, held) if v]


@contextlib.contextmanager
def _scratch(root: PathLike):
    """A hidden working folder root/.prepare-XXXX (unpacked archives, the new
    dataset before it is renamed into place), locked while in use and removed
    at the end. Ones a killed prepare left behind are removed first."""
    root = check_writable(root)          # a clear error for a --dst that is a file or read-only
    remove_stale_scratch(root)
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=root) as d:
        with FolderLock(d, "packnet_edu data prepare"):
            yield d


def remove_stale_scratch(root: Path, min_age_s: float = 60.0) -> List[Path]:
    """Delete root/.prepare-* folders nobody holds the lock of (left by a killed
    prepare; a live one holds its lock). Young ones are left alone: their
    prepare may not have taken its lock yet."""
    import time
    gone = []
    for d in sorted(Path(root).glob(".prepare-*")):
        if not d.is_dir() or d.is_symlink() or time.time() - d.stat().st_mtime < min_age_s:
            continue
        try:
            FolderLock(d).acquire().release()
        except OSError:                 # held by a running prepare, or not ours to touch
            continue
        shutil.rmtree(d, ignore_errors=True)
        gone.append(d)
    return gone


# ------------------------------------------------------------------ prepare
def prepare_cubs(src: PathLike, root: PathLike, val_fraction: Optional[float] = None, seed: int = 0,
                 workers: int = 4, force: bool = False) -> Path:
    """CUB-200-2011 -> root/cubs, every image cropped to its bounding box."""
    _check_request("cubs", src, root, val_fraction, force)
    with _scratch(root) as scratch:
        s = _Source(src, "CUB_200_2011", "cubs", Path(scratch) / "src")
        paths = dict(_lines(s.find("images.txt"), 2, "'<image id> <path>'"))
        labels = {i: _number(c, int, s.find("image_class_labels.txt"), i)
                  for i, c in _lines(s.find("image_class_labels.txt"), 2, "'<image id> <class id>'")}
        class_rows = _lines(s.find("classes.txt"), 2, "'<class id> <class name>'")
        boxes = {r[0]: _cub_box(r, s.find("bounding_boxes.txt"))
                 for r in _lines(s.find("bounding_boxes.txt"), 5, "'<image id> <x> <y> <width> <height>'")}
        split_rows = _lines(s.find("train_test_split.txt"), 2, "'<image id> <0|1>'")
        bad = [i for i, f in split_rows if f not in ("0", "1")]
        if bad:
            raise DatasetError(f"cubs: train_test_split.txt marks image {bad[0]} with "
                               f"{dict(split_rows)[bad[0]]!r}: 1 (train) or 0 (test) expected")
        is_train = {i: f == "1" for i, f in split_rows}
        images = s.find("images", "dir")
        ids = sorted(paths, key=int)
        for what, table in (("image_class_labels.txt", labels), ("bounding_boxes.txt", boxes),
                            ("train_test_split.txt", is_train)):
            missing = [i for i in ids if i not in table]
            if missing:
                raise DatasetError(f"cubs: {what} has no line for image ids {missing[:5]} "
                                   f"({len(missing)} of {len(ids)}): a complete CUB_200_2011 folder is expected")
        class_ids = [_number(r[0], int, s.find("classes.txt"), r[0]) for r in class_rows]
        index = {c: k for k, c in enumerate(class_ids)}
        classes = [r[1].split(".", 1)[-1].replace("_", " ") for r in class_rows]
        dirs = [f"{k:04d}_{_slug(r[1])}" for k, r in enumerate(class_rows)]
        splits: Dict[str, List[Item]] = {"train": [], "test": []}
        for i in ids:
            p = images / paths[i]
            if not p.is_file():
                raise DatasetError(f"cubs: images.txt lists {paths[i]} but {p} is missing")
            if labels[i] not in index:
                raise DatasetError(f"cubs: image {i} has class {labels[i]}, not in classes.txt")
            x, y, w, h = boxes[i]
            box = (int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h)))
            splits["train" if is_train[i] else "test"].append((p, index[labels[i]], box, Path(paths[i]).name))
        splits["train"], splits["val"] = _with_val("cubs", splits["train"], val_fraction, seed)
        return _write_dataset("cubs", root, classes, dirs, splits, src, seed, False, workers, force, Path(scratch))


def _cars_items(annos, images: Path, index_of, mat: Path) -> List[Item]:
    items = []
    for a in np.atleast_1d(annos):
        try:
            x1, y1, x2, y2 = (int(a[f]) for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
            cls, fname = int(a["class"]), str(a["fname"])
        except (ValueError, IndexError, KeyError) as err:
            raise DatasetError(f"cars: {mat} annotations need fields bbox_x1, bbox_y1, bbox_x2, bbox_y2, "
                               f"class and fname ({err})") from None
        p = images / fname
        if not p.is_file():
            raise DatasetError(f"cars: {mat} lists {fname} but {p} is missing")
        # The devkit's boxes are 1-based and inclusive: pixels x1..x2.
        items.append((p, index_of(cls), (x1 - 1, y1 - 1, x2, y2), fname))
    return items


def prepare_cars(src: PathLike, root: PathLike, val_fraction: Optional[float] = None, seed: int = 0,
                 workers: int = 4, force: bool = False) -> Path:
    """Stanford Cars -> root/cars, every image cropped to its bounding box."""
    _check_request("cars", src, root, val_fraction, force)
    with _scratch(root) as scratch:
        s = _Source(src, "stanford_cars", "cars", Path(scratch) / "src")
        meta_path = s.find("devkit/cars_meta.mat")
        names = [str(n) for n in np.atleast_1d(_mat_field(_loadmat(meta_path, "cars"), "class_names", meta_path, "cars"))]

        def index_of(c: int) -> int:
            if not 1 <= c <= len(names):
                raise DatasetError(f"cars: class {c} outside 1..{len(names)} of cars_meta.mat")
            return c - 1

        splits = {}
        for split, rel in (("train", "devkit/cars_train_annos.mat"), ("test", "cars_test_annos_withlabels.mat")):
            try:
                mat = s.find(rel)
            except DatasetError:
                if split != "test":
                    raise
                mat = s.find("devkit/cars_test_annos_withlabels.mat")
            annos = _mat_field(_loadmat(mat, "cars"), "annotations", mat, "cars")
            splits[split] = _cars_items(annos, s.find(f"cars_{split}", "dir"), index_of, mat)
        splits["train"], splits["val"] = _with_val("cars", splits["train"], val_fraction, seed)
        dirs = [f"{k:04d}_{_slug(n)}" for k, n in enumerate(names)]
        return _write_dataset("cars", root, names, dirs, splits, src, seed, False, workers, force, Path(scratch))


def prepare_flowers(src: PathLike, root: PathLike, seed: int = 0, workers: int = 4, force: bool = False,
                    download: bool = False, link: bool = False, val_fraction: Optional[float] = None) -> Path:
    """Flowers102 -> root/flowers with its official splits (trnid, valid, tstid).
    `download`: fetch it into `src` with torchvision first (needs internet)."""
    if val_fraction is not None:
        raise DatasetError("flowers uses its official validation split (setid.mat 'valid'); "
                           "--val-fraction does not apply")
    _check_request("flowers", src, root, None, force)
    if download:
        from torchvision.datasets import Flowers102
        for split in SPLITS:
            Flowers102(str(src), split=split, download=True)
    with _scratch(root) as scratch:
        s = _Source(src, "flowers-102", "flowers", Path(scratch) / "src")
        lp, sp = s.find("imagelabels.mat"), s.find("setid.mat")
        labels = np.atleast_1d(_mat_field(_loadmat(lp, "flowers"), "labels", lp, "flowers")).astype(int)
        setid = _loadmat(sp, "flowers")
        images = s.find("jpg", "dir")
        if labels.size == 0 or labels.min() < 1:
            found = "no labels" if labels.size == 0 else f"label {labels.min()}"
            raise DatasetError(f"flowers: {lp} 'labels' must hold one class (1..102) per image; found {found}")
        n = int(labels.max())
        if n == 102:
            from torchvision.datasets import Flowers102
            classes = list(Flowers102.classes)
        else:
            classes = [f"flower {c}" for c in range(1, n + 1)]
        splits = {}
        for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
            items = []
            for i in np.atleast_1d(_mat_field(setid, key, sp, "flowers")).astype(int):
                if not 1 <= i <= len(labels):
                    raise DatasetError(f"flowers: setid.mat '{key}' has image id {i}, imagelabels.mat "
                                       f"labels only {len(labels)} images")
                p = images / f"image_{i:05d}.jpg"
                if not p.is_file():
                    raise DatasetError(f"flowers: setid.mat lists image {i} but {p} is missing")
                items.append((p, int(labels[i - 1]) - 1, None, p.name))
            splits[split] = items
        dirs = [f"{k:04d}_{_slug(c)}" for k, c in enumerate(classes)]
        return _write_dataset("flowers", root, classes, dirs, splits, src, seed, link, workers, force, Path(scratch))


def _imagenet_folder(src: Path) -> Path:
    """A folder with train/<wnid>/ and val/<wnid>/, unpacking the official
    archives with torchvision.datasets.ImageNet where that is what `src` holds."""
    for cand in (src, src / "imagenet", src / "ILSVRC" / "Data" / "CLS-LOC"):
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    if (src / "ILSVRC2012_devkit_t12.tar.gz").is_file():
        from torchvision.datasets import ImageNet
        for split in ("train", "val"):
            ImageNet(str(src), split=split)     # parses the archives into src/train, src/val
        return src
    raise DatasetError(f"imagenet: no train/ and val/ folders in {src}; expected {DATASETS['imagenet'].expected}")


def prepare_imagenet(src: PathLike, root: PathLike, val_fraction: Optional[float] = None, seed: int = 0,
                     workers: int = 8, force: bool = False, link: bool = True) -> Path:
    """ImageNet -> root/imagenet: train minus a held-out `val_fraction` (default
    1%), val = that held-out part, test = the official validation set. Images
    are symlinked (`link`, the default: 140 GB need not be copied) or copied."""
    src = Path(src)
    _check_request("imagenet", src, root, val_fraction, force)
    if not src.is_dir():
        raise DatasetError(f"imagenet: {src} is not a folder; expected {DATASETS['imagenet'].expected}")
    base = _imagenet_folder(src)
    wnids = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    val_wnids = sorted(p.name for p in (base / "val").iterdir() if p.is_dir())
    if not wnids or wnids != val_wnids:
        raise DatasetError(f"imagenet: {base}/train has {len(wnids)} class folders and {base}/val "
                           f"{len(val_wnids)}; both must hold the same <wnid> folders (a flat val/ of "
                           "ILSVRC2012_val_*.JPEG must first be sorted into class folders, e.g. by "
                           "torchvision.datasets.ImageNet from the devkit)")
    exts = (".jpeg", ".jpg", ".png")
    splits: Dict[str, List[Item]] = {"train": [], "test": []}
    for split, key in (("train", "train"), ("val", "test")):
        for k, w in enumerate(wnids):
            files = sorted(p for p in (base / split / w).iterdir() if p.suffix.lower() in exts)
            splits[key] += [(p, k, None, p.name) for p in files]
    if len(wnids) == 1000:
        from torchvision.models import VGG16_Weights     # class names in index order; no download
        classes = list(VGG16_Weights.IMAGENET1K_V1.meta["categories"])
    else:
        classes = list(wnids)
    splits["train"], splits["val"] = _with_val("imagenet", splits["train"], val_fraction, seed)
    with _scratch(root) as scratch:
        return _write_dataset("imagenet", root, classes, wnids, splits, src, seed, link, workers, force,
                              Path(scratch))


PREPARE: Dict[str, Callable[..., Path]] = {"imagenet": prepare_imagenet, "cubs": prepare_cubs,
                                           "cars": prepare_cars, "flowers": prepare_flowers}


def prepare(name: str, src: PathLike, root: PathLike, **kwargs) -> Path:
    info(name)
    return PREPARE[name](src, root, **kwargs)


# ------------------------------------------------------------------ command line
def add_data_command(sub) -> None:
    """`data prepare NAME --src SRC --dst ROOT` and `data check --root ROOT`."""
    data = sub.add_parser("data", help="prepare and check the VGG-16 pipeline's datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser("prepare", help="turn a dataset's original archive or folder into "
                                            "DST/<name>/{train,val,test}/<class>/ image folders",
                           description="\n\n".join(f"{n}: {d.expected}" for n, d in DATASETS.items()),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    prep.add_argument("name", choices=NAMES)
    prep.add_argument("--src", type=Path, required=True, help="the original archive or folder (see above)")
    prep.add_argument("--dst", type=Path, required=True, help="the data root: writes DST/<name>/ "
                                                              "(pass the same folder as --data-root)")
    prep.add_argument("--val-fraction", type=_fraction, default=None,
                      help="share of each class's training images held out for validation "
                           "(default: imagenet 0.01, cubs and cars 0.1; flowers has an official split)")
    prep.add_argument("--seed", type=_count, default=0, help="seed of the validation split")
    prep.add_argument("--workers", type=int, default=4, help="threads decoding and cropping images")
    prep.add_argument("--force", action="store_true", help="replace an existing DST/<name>")
    prep.add_argument("--copy", action="store_true", help="imagenet: copy images instead of symlinking them")
    prep.add_argument("--download", action="store_true",
                      help="flowers: download into --src with torchvision first (needs internet)")
    prep.set_defaults(func=cmd_prepare)
    chk = dsub.add_parser("check", help="load prepared datasets and print their sizes")
    chk.add_argument("--root", type=Path, required=True)
    chk.add_argument("--sample", type=_count, default=16,
                     help="images of each split opened and decoded (0: none; default 16)")
    chk.add_argument("names", nargs="*", help=f"datasets to check (default: those present; any of {', '.join(NAMES)})")
    chk.set_defaults(func=cmd_check)


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, 0 or more")
    return n


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number between 0 and 1 (exclusive), e.g. 0.1")
    return v


def cmd_prepare(args) -> int:
    kwargs = {"seed": args.seed, "workers": args.workers, "force": args.force}
    if args.name == "imagenet":
        kwargs["link"] = not args.copy
    if args.name == "flowers":
        kwargs["download"] = args.download
    elif args.download:
        raise SystemExit(f"error: --download: torchvision cannot download {args.name}; "
                         f"get it yourself: {DATASETS[args.name].expected}")
    if args.val_fraction is not None:
        kwargs["val_fraction"] = args.val_fraction
    try:
        out = prepare(args.name, args.src, args.dst, **kwargs)
    except DataMissingError as err:
        raise SystemExit(f"error: {err}")
    meta = json.loads((out / "classes.json").read_text())
    print(f"wrote {out}: {len(meta['classes'])} classes, " +
          ", ".join(f"{s} {meta['counts'][s]}" for s in SPLITS) + " images")
    return 0


def cmd_check(args) -> int:
    names = args.names or [n for n in NAMES if (args.root / n).exists()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise SystemExit(f"error: unknown dataset(s) {unknown}: choose from {', '.join(NAMES)}")
    if not names:
        raise SystemExit(f"error: no prepared dataset in {args.root} (expected folders named "
                         f"{', '.join(NAMES)}); run `python -m packnet_edu data prepare ...` first")
    try:
        counts = check(args.root, names, args.sample)
    except (DataMissingError, ValueError) as err:
        raise SystemExit(f"error: {err}")
    for name, c in counts.items():
        note = "" if c["classes"] == c["expected_classes"] else f"  (the real dataset has {c['expected_classes']})"
        print(f"{name:9s} {c['classes']:5d} classes  train {c['train']:8d}  val {c['val']:6d}  "
              f"test {c['test']:6d}  ({c['opened']} images opened){note}")
    return 0
