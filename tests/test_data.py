"""The offline task sequence: real data, fixed splits, clear errors."""
import numpy as np
import pytest
import torch

from packnet_edu import data


@pytest.fixture(scope="module")
def tasks():
    return {t.name: t for t in data.offline_sequence(seed=0, max_train=3000)}


def test_four_tasks_with_expected_sizes(tasks):
    assert list(tasks) == ["fashion", "mnist", "animals", "digits"]
    sizes = {n: (len(t.train), len(t.val), len(t.test)) for n, t in tasks.items()}
    assert sizes["fashion"] == (3000, 5000, 10000)           # official test split kept
    assert sizes["mnist"] == (3000, 500, 1000)
    assert sizes["animals"] == (3000, 974, 1941)           # 9,716 unique images, 70/10/20 per class
    assert sizes["digits"] == (1258, 180, 359)
    for t in tasks.values():
        x, y = t.train.tensors
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert t.num_classes == 10 and set(y.tolist()) == set(range(10))


def test_splits_are_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(5), [100, 40, 60, 80, 20])
    parts = data.stratified_split(labels, (0.7, 0.1, 0.2), seed=3)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(labels) == len(set(allidx.tolist()))
    for c, n in zip(range(5), [100, 40, 60, 80, 20]):
        assert [int((labels[p] == c).sum()) for p in parts] == [round(0.7 * n), round(0.8 * n) - round(0.7 * n),
                                                                n - round(0.8 * n)]
    again = data.stratified_split(labels, (0.7, 0.1, 0.2), seed=3)
    other = data.stratified_split(labels, (0.7, 0.1, 0.2), seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_no_image_in_two_splits(tasks):
    for t in (tasks["mnist"], tasks["animals"]):
        seen = {bytes(x.numpy().tobytes()) for x in t.train.tensors[0]}
        assert not any(bytes(x.numpy().tobytes()) in seen for x in t.test.tensors[0][:300])


def test_missing_fashion_mnist_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_DIRS", [tmp_path / "none"])
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    monkeypatch.delenv("PACKNET_FASHION_MNIST", raising=False)
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(data.DataMissingError, match="apt-get install dataset-fashion-mnist"):
        data.load_fashion_mnist()


def test_fashion_mnist_from_a_folder_given_by_environment(monkeypatch, tmp_path):
    import gzip
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    labels = np.array([3, 7], dtype=np.uint8)
    for split in ("train", "t10k"):
        with gzip.open(tmp_path / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + images.tobytes())
        with gzip.open(tmp_path / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + labels.tobytes())
    monkeypatch.setenv("PACKNET_FASHION_MNIST", str(tmp_path))
    monkeypatch.setattr(data, "FASHION_DIRS", [])
    xtr, ytr, xte, yte = data.load_fashion_mnist()
    assert np.array_equal(xtr, images) and ytr.tolist() == [3, 7] and ytr.dtype == np.int64


def test_unknown_task():
    with pytest.raises(ValueError, match="offline tasks are fashion, mnist, animals, digits"):
        data.load_task("cifar")


def test_loader_batches_in_a_seeded_order(tasks):
    ds = tasks["digits"].train
    a = [y for _, y in data.make_loader(ds, 100, shuffle=True, seed=1)]
    b = [y for _, y in data.make_loader(ds, 100, shuffle=True, seed=1)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert sum(len(y) for y in a) == len(ds)


def test_offline_tasks_for_vgg16_are_rgb_and_large_enough():
    from packnet_edu.train import Config, load_tasks
    from packnet_edu.models import vgg16
    tasks = load_tasks(Config(model="vgg16", tasks=("digits",), max_train=50))
    x, y = tasks[0].train.tensors
    assert x.shape == (50, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2])
    model = vgg16([10])
    model.eval()
    with torch.no_grad():
        assert model(x[:2], 1).shape == (2, 10)


# ------------------------------------------------------------------ damaged data files (issue 10)
def _idx(shape, values: bytes) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape) + values


def _fashion_folder(folder, labels=(3, 7), n_images=2, images_gz=None):
    import gzip
    folder.mkdir(exist_ok=True)
    images = _idx((n_images, 28, 28), bytes(n_images * 28 * 28))
    for split in ("train", "t10k"):
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(
            images_gz if images_gz is not None else gzip.compress(images))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx((len(labels),), bytes(labels))))
    return folder


@pytest.mark.parametrize("case, message", [
    ("truncated", "damaged .*EOFError"),                  # a download cut off mid-way
    ("not gzip", "not an IDX file"),                      # an HTML error page saved as .gz
    ("short", "truncated or damaged: its header promises"),
    ("count", "2 images but 3 labels"),
    ("label", r"labels must lie in 0..9, found 3..12"),
])
def test_damaged_fashion_mnist_files_say_what_to_do(tmp_path, monkeypatch, case, message):
    import gzip
    good = gzip.compress(_idx((2, 28, 28), bytes(2 * 28 * 28)))
    folder = {"truncated": lambda: _fashion_folder(tmp_path / "f", images_gz=good[: len(good) // 2]),
              "not gzip": lambda: _fashion_folder(tmp_path / "f", images_gz=b"<html>Not found</html>"),
              "short": lambda: _fashion_folder(tmp_path / "f", images_gz=gzip.compress(_idx((2, 28, 28), bytes(100)))),
              "count": lambda: _fashion_folder(tmp_path / "f", labels=(1, 2, 3)),
              "label": lambda: _fashion_folder(tmp_path / "f", labels=(3, 12))}[case]()
    monkeypatch.setenv("PACKNET_FASHION_MNIST", str(folder))
    with pytest.raises(data.DataFileError, match=message) as err:
        data.load_fashion_mnist()
    assert "PACKNET_FASHION_MNIST" in str(err.value) and "\n" not in str(err.value)


def test_uncompressed_idx_files_named_gz_still_load(tmp_path, monkeypatch):
    """The format is told by the bytes, not the name."""
    folder = _fashion_folder(tmp_path / "f", images_gz=_idx((2, 28, 28), bytes(range(256)) * 6 + bytes(32)))
    monkeypatch.setenv("PACKNET_FASHION_MNIST", str(folder))
    xtr, ytr, _, _ = data.load_fashion_mnist()
    assert xtr.shape == (2, 28, 28) and int(xtr[0, 0, 5]) == 5 and ytr.tolist() == [3, 7]


@pytest.mark.parametrize("case, message", [
    ("garbage", "damaged .*BadZipFile.*git checkout"),
    ("keys", "damaged .*images"),
    ("count", "3 images but 2 labels"),
    ("label", "labels must lie in 0..9"),
])
def test_a_broken_animals_file_says_how_to_restore_it(tmp_path, monkeypatch, case, message):
    path = tmp_path / "animal_silhouettes.npz"
    if case == "garbage":
        path.write_bytes(b"PK\x03\x04" + bytes(50))
    elif case == "keys":
        np.savez(path, pictures=np.zeros((2, 28, 28), np.uint8))
    elif case == "count":
        np.savez(path, images=np.zeros((3, 28, 28), np.uint8), labels=np.array([0, 1]))
    else:
        np.savez(path, images=np.zeros((2, 28, 28), np.uint8), labels=np.array([0, 10]))
    monkeypatch.setattr(data, "DATA_DIR", tmp_path)
    with pytest.raises(data.DataFileError, match=message):
        data.load_animals()


def test_a_broken_data_file_is_one_line_on_the_command_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    folder = _fashion_folder(tmp_path / "f", images_gz=b"not gzip at all")
    r = subprocess.run([sys.executable, "-m", "packnet_edu", "run", "--tasks", "fashion", "--out", str(tmp_path / "o")],
                       cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PACKNET_FASHION_MNIST=str(folder), TQDM_DISABLE="1"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: Fashion-MNIST:") and len(r.stderr.strip().splitlines()) == 1
