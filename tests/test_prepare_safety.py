"""`data prepare` never loses the user's data, and bad sources are one-line
errors before anything is written; `data check` opens the images (issue 10)."""
import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from packnet_edu import vgg_data as vd
from packnet_edu.replicas import make_cubs_replica, make_flowers_replica, make_imagenet_replica

ROOT = Path(__file__).resolve().parent.parent


def tree(folder: Path) -> dict:
    """Every file under `folder` (links not followed) with its bytes: a snapshot to compare."""
    return {str(p.relative_to(folder)): (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def parse(*argv):
    p = argparse.ArgumentParser()
    vd.add_data_command(p.add_subparsers(dest="command", required=True))
    return p.parse_args(["data", *argv])


# ------------------------------------------------------------------ item 1: the source is never touched
def test_imagenet_source_inside_the_output_is_never_deleted(tmp_path):
    """The issue's case: --src D/imagenet --dst D --force replaced D/imagenet,
    that is the source itself, and every original image was gone."""
    src = make_imagenet_replica(tmp_path / "D", num_classes=3)          # D/imagenet
    before = tree(src)
    for force in (False, True):
        with pytest.raises(vd.DatasetError, match="overlap.*choose a --dst outside the source") as err:
            vd.prepare_imagenet(src, tmp_path / "D", force=force)
        assert "--force" not in str(err.value)                         # never suggested for this
    assert tree(src) == before


@pytest.mark.parametrize("layout", ["dst inside src", "src inside output", "output is src"])
def test_overlapping_source_and_destination_are_refused(tmp_path, layout):
    if layout == "dst inside src":          # the output D/out/cubs would be written into the source
        src = make_cubs_replica(tmp_path / "src", num_classes=2)
        dst = src / "out"
    elif layout == "src inside output":     # --force would delete D/cubs and the source in it
        src = make_cubs_replica(tmp_path / "D" / "cubs", num_classes=2)
        dst = tmp_path / "D"
    else:                                   # the output D/cubs is the source folder itself
        make_cubs_replica(tmp_path / "D" / "cubs", num_classes=2)
        src, dst = tmp_path / "D" / "cubs", tmp_path / "D"
    before = tree(tmp_path)
    with pytest.raises(vd.DatasetError, match="overlap"):
        vd.prepare_cubs(src, dst, force=True)
    assert tree(tmp_path) == before


def test_symlinked_source_inside_the_output_is_found(tmp_path):
    real = make_imagenet_replica(tmp_path / "disk", num_classes=2)
    (tmp_path / "D").mkdir()
    (tmp_path / "D" / "imagenet").symlink_to(real, target_is_directory=True)
    before = tree(real)
    with pytest.raises(vd.DatasetError, match="overlap"):
        vd.prepare_imagenet(tmp_path / "D" / "imagenet", tmp_path / "D", force=True)
    assert tree(real) == before


def test_force_replaces_only_a_prepared_dataset(tmp_path):
    src = make_flowers_replica(tmp_path / "src", num_classes=2)
    mine = tmp_path / "D" / "flowers"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's own folder")
    with pytest.raises(vd.DatasetError, match="not a flowers dataset prepared by packnet_edu.*move it away") as err:
        vd.prepare_flowers(src, tmp_path / "D", force=True)
    assert "--force" not in str(err.value) and (mine / "notes.txt").read_text() == "the user's own folder"
    (mine / "notes.txt").unlink()
    mine.rmdir()
    vd.prepare_flowers(src, tmp_path / "D")
    first = tree(mine)
    vd.prepare_flowers(src, tmp_path / "D", force=True)                 # a prepared one: replaced
    assert tree(mine) == first
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["flowers"]   # no scratch or old copy left


# ------------------------------------------------------------------ bad sources: one clear error, nothing written
def _cubs(tmp_path, n=2):
    return make_cubs_replica(tmp_path / "src", num_classes=n)


def _expect(tmp_path, fn, message):
    with pytest.raises(vd.DatasetError, match=message):
        fn()
    out = tmp_path / "D"
    assert not out.exists() or not [p for p in out.iterdir()], "something was written"


def test_a_file_that_is_not_an_image(tmp_path):
    base = _cubs(tmp_path)
    victim = sorted((base / "images").rglob("*.jpg"))[0]
    victim.write_text("<html>this is not a JPEG</html>")
    _expect(tmp_path, lambda: vd.prepare_cubs(base, tmp_path / "D"), "is not a readable image.*UnidentifiedImageError")
    fl = make_flowers_replica(tmp_path / "fl", num_classes=2)            # copied, not decoded: checked too
    (fl / "jpg" / "image_00001.jpg").write_bytes(b"\x00" * 40)
    _expect(tmp_path, lambda: vd.prepare_flowers(fl, tmp_path / "D"), "image_00001.jpg is not a readable image")


@pytest.mark.parametrize("row, message", [
    ("1 nan 3.0 10.0 10.0", "finite numbers with a positive width"),
    ("1 2.0 3.0 0.0 10.0", "finite numbers with a positive width"),
    ("1 2.0 three 10.0 10.0", "'three' .* is not a number"),
])
def test_bad_bounding_boxes(tmp_path, row, message):
    base = _cubs(tmp_path)
    lines = (base / "bounding_boxes.txt").read_text().splitlines()
    (base / "bounding_boxes.txt").write_text("\n".join([row] + lines[1:]) + "\n")
    _expect(tmp_path, lambda: vd.prepare_cubs(base, tmp_path / "D"), message)


def test_bad_labels_and_split_flags(tmp_path):
    base = _cubs(tmp_path)
    lines = (base / "train_test_split.txt").read_text().splitlines()
    (base / "train_test_split.txt").write_text("\n".join(["1 2"] + lines[1:]) + "\n")
    _expect(tmp_path, lambda: vd.prepare_cubs(base, tmp_path / "D"), "1 \\(train\\) or 0 \\(test\\) expected")
    base = make_cubs_replica(tmp_path / "src2", num_classes=2)
    lines = (base / "image_class_labels.txt").read_text().splitlines()
    (base / "image_class_labels.txt").write_text("\n".join(["1 one"] + lines[1:]) + "\n")
    _expect(tmp_path, lambda: vd.prepare_cubs(base, tmp_path / "D"), "'one' .* is not an integer")


def test_out_of_range_flowers_label(tmp_path):
    """A label 0 used to be written silently into the last class's folder."""
    import numpy as np
    from scipy.io import savemat
    fl = make_flowers_replica(tmp_path / "fl", num_classes=2)
    savemat(fl / "imagelabels.mat", {"labels": np.array([[0, 1, 1, 2, 2, 2]], dtype=np.uint8)})
    _expect(tmp_path, lambda: vd.prepare_flowers(fl, tmp_path / "D"), "one class \\(1..102\\) per image; found label 0")


def test_label_and_image_count_mismatch(tmp_path):
    import numpy as np
    from scipy.io import savemat
    fl = make_flowers_replica(tmp_path / "fl", num_classes=2)           # 6 images
    savemat(fl / "imagelabels.mat", {"labels": np.array([[1, 1, 1, 2]], dtype=np.uint8)})
    _expect(tmp_path, lambda: vd.prepare_flowers(fl, tmp_path / "D"), "image id [56], imagelabels.mat labels only 4")


def test_empty_annotation_files(tmp_path):
    """Used to prepare a dataset of 0 images and exit 0."""
    base = _cubs(tmp_path)
    for name in ("images.txt", "image_class_labels.txt", "bounding_boxes.txt", "train_test_split.txt"):
        (base / name).write_text("")
    _expect(tmp_path, lambda: vd.prepare_cubs(base, tmp_path / "D"), "lists no train or val or test images")
    import numpy as np
    from scipy.io import savemat
    fl = make_flowers_replica(tmp_path / "fl", num_classes=2)
    savemat(fl / "setid.mat", {k: np.zeros((1, 0), dtype=np.uint16) for k in ("trnid", "valid", "tstid")})
    _expect(tmp_path, lambda: vd.prepare_flowers(fl, tmp_path / "D"), "lists no train or val or test images")


@pytest.mark.parametrize("cut", ["truncated", "garbage"])
def test_a_corrupt_archive(tmp_path, cut):
    base = _cubs(tmp_path)
    archive = tmp_path / "CUB_200_2011.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(base, arcname="CUB_200_2011")
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2] if cut == "truncated" else b"garbage" * 100)
    _expect(tmp_path, lambda: vd.prepare_cubs(archive, tmp_path / "D"), "cannot unpack .*download it again")


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, float("nan")])
def test_val_fraction_outside_0_1(tmp_path, fraction):
    base = _cubs(tmp_path)
    _expect(tmp_path, lambda: vd.prepare_cubs(base, tmp_path / "D", val_fraction=fraction),
            "--val-fraction .* between 0 and 1")
    with pytest.raises(SystemExit):
        parse("prepare", "cubs", "--src", str(base), "--dst", str(tmp_path / "D"), "--val-fraction", str(fraction))


def test_prepare_errors_are_one_line_on_the_command_line(tmp_path):
    src = make_imagenet_replica(tmp_path / "D", num_classes=2)
    r = subprocess.run([sys.executable, "-m", "packnet_edu", "data", "prepare", "imagenet", "--src", str(src),
                        "--dst", str(tmp_path / "D"), "--force"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: imagenet:") and "overlap" in lines[0]
    assert (src / "train").is_dir()


# ------------------------------------------------------------------ data check opens images
def test_check_opens_a_sample_of_the_images(tmp_path, capsys):
    src = make_imagenet_replica(tmp_path / "src", num_classes=3)
    vd.prepare_imagenet(src, tmp_path / "D")                           # symlinks to the originals
    counts = vd.check(tmp_path / "D", ["imagenet"], sample=4)
    assert counts["imagenet"]["opened"] == 3 + 3 + 3                  # every image of these tiny splits
    args = parse("check", "--root", str(tmp_path / "D"))
    assert args.func(args) == 0 and "images opened" in capsys.readouterr().out
    victim = sorted((src / "val").rglob("*.JPEG"))[-1]                 # a test image: the last of its split
    victim.write_bytes(victim.read_bytes()[:40])                       # a cut-off JPEG
    with pytest.raises(vd.DatasetError, match="is not a readable image.*prepare imagenet again"):
        vd.check(tmp_path / "D", ["imagenet"])
    victim.unlink()                                                    # the original moved away
    with pytest.raises(vd.DatasetError, match="is missing .*restore the source"):
        vd.check(tmp_path / "D", ["imagenet"])
    assert vd.check(tmp_path / "D", ["imagenet"], sample=0)           # --sample 0: counts only


def test_check_notices_files_added_or_removed(tmp_path):
    fl = make_flowers_replica(tmp_path / "fl", num_classes=2)
    out = vd.prepare_flowers(fl, tmp_path / "D")
    next((out / "train").rglob("*.jpg")).unlink()
    with pytest.raises(vd.DatasetError, match="classes.json recorded.*prepare it again"):
        vd.check(tmp_path / "D", ["flowers"])


def test_scratch_left_by_a_killed_prepare_is_removed(tmp_path):
    from packnet_edu.fileio import FolderLock
    src = make_flowers_replica(tmp_path / "src", num_classes=2)
    dead, live = tmp_path / "D" / ".prepare-dead", tmp_path / "D" / ".prepare-live"
    for d in (dead, live):
        (d / "src").mkdir(parents=True)
        (d / "src" / "big.bin").write_bytes(b"x" * 1000)
    (dead / ".lock").write_text("packnet_edu data prepare (pid 999999)")   # killed: file left, unlocked
    with FolderLock(live, "another prepare"):
        for d in (dead, live):
            os.utime(d, (0, 0))                                        # made long ago
        vd.prepare_flowers(src, tmp_path / "D")
        assert not dead.exists() and (live / "src" / "big.bin").exists()
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == [".prepare-live", "flowers"]


def test_a_dst_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError, match="afile is a file, not a folder: choose another output folder"):
        vd.prepare_cubs(_cubs(tmp_path), tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "x"
