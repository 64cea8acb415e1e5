"""scripts/gpu_evidence.py, the one command a lent GPU machine runs (issue 18).

Its --smoke mode runs every step on the CPU at tiny sizes. Run once here, as
the GPU machine would run it (from another folder, with a relative output
folder), it must bring back every figure within the device tool's limits on
what comes back (at most 8 files, 16 MiB each, 2 folders deep, plain names),
label every figure a smoke value, and import nothing that the GPU machine's
python3 lacks (benchmarks/results/gpu_machine_packages.txt).
"""
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_evidence.py"
PACKAGES = REPO / "benchmarks" / "results" / "gpu_machine_packages.txt"
NAME = re.compile(r"[A-Za-z0-9._-]+")
FIGURES = ("env", "step32", "loop", "decode", "restore32", "step128", "loader", "distributed", "offline", "probe",
           "tests")

# Written into a sitecustomize.py the smoke run's every Python process loads:
# at exit, it lists the top-level modules that process imported.
IMPORT_LOGGER = """
import atexit, os, sys
def _dump():
    names = sorted({m.split('.')[0] for m in list(sys.modules)})
    with open(os.path.join(os.environ['EVIDENCE_IMPORTS'], f'{os.getpid()}.txt'), 'w') as f:
        f.write('\\n'.join(names))
atexit.register(_dump)
"""


def beyond_the_limits(out: Path) -> list:
    """What in `out` the device tool would not bring back: more than 8 files,
    a file over 16 MiB, deeper than $OUT/a/b/file, a name with other
    characters than letters, digits, '.', '_' and '-', or anything not a plain file or folder."""
    files = [p for p in out.rglob("*") if p.is_file()]
    bad = [f"{len(files)} files"] if len(files) > 8 else []
    for p in out.rglob("*"):
        rel = p.relative_to(out)
        if not all(NAME.fullmatch(part) for part in rel.parts):
            bad.append(f"name {rel}")
        if len(rel.parts) > (3 if p.is_file() else 2):
            bad.append(f"too deep {rel}")
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            bad.append(f"not a plain file {rel}")
        elif p.is_file() and p.stat().st_size > 16 * 2 ** 20:
            bad.append(f"over 16 MiB {rel}")
    return bad


def test_the_limit_check_finds_each_excess(tmp_path):
    ok = tmp_path / "ok"
    (ok / "a" / "b").mkdir(parents=True)
    (ok / "a" / "b" / "f.txt").write_text("x")
    with open(ok / "big.bin", "wb") as f:
        f.truncate(16 * 2 ** 20)
    assert beyond_the_limits(ok) == []
    bad = tmp_path / "bad"
    (bad / "a" / "b" / "c").mkdir(parents=True)
    (bad / "a" / "b" / "c" / "deep.txt").write_text("x")
    (bad / "sp ace.txt").write_text("x")
    (bad / "link").symlink_to(bad / "sp ace.txt")
    for i in range(7):
        (bad / f"f{i}").write_text("x")
    with open(bad / "big.bin", "wb") as f:
        f.truncate(16 * 2 ** 20 + 1)
    found = beyond_the_limits(bad)
    assert found[0] == "11 files" and "too deep a/b/c" in found and "too deep a/b/c/deep.txt" in found
    assert {"name sp ace.txt", "not a plain file link", "over 16 MiB big.bin"} <= set(found), found


def _script():
    spec = importlib.util.spec_from_file_location("gpu_evidence", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env(**extra):
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]), **extra)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    (tmp / "hook").mkdir()
    (tmp / "hook" / "sitecustomize.py").write_text(IMPORT_LOGGER)
    (tmp / "imports").mkdir()
    env = _env(EVIDENCE_IMPORTS=str(tmp / "imports"))
    env["PYTHONPATH"] = str(tmp / "hook") + os.pathsep + env["PYTHONPATH"]
    # from another folder than the repository, with a relative output folder (issue 16, item 12);
    # --budget: CI shares its CPU; more than the default 600 s, so that a slow CI still passes
    proc = subprocess.run([sys.executable, str(SCRIPT), "ev", "--smoke", "--budget", "800"], cwd=tmp, env=env,
                          check=False, capture_output=True, text=True, timeout=900)
    return tmp, proc


@pytest.mark.timeout(960)
def test_smoke_run_brings_back_every_figure_within_the_limits(smoke):
    tmp, proc = smoke
    out = tmp / "ev"
    assert not (REPO / "ev").exists() and (out / "summary.md").is_file(), proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert proc.returncode == 0, json.dumps({k: v["status"] for k, v in res["steps"].items()}) + proc.stderr[-3000:]
    assert beyond_the_limits(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["bundle.tar.gz", "log.txt", "results.json", "summary.md"]
    with tarfile.open(out / "bundle.tar.gz") as tar:
        assert {"offline.txt", "tests.txt"} <= set(tar.getnames())
    # every figure ran, and is labelled a smoke value, not a measurement
    assert [s for s in FIGURES if res["steps"][s]["status"] != "ok"] == []
    assert res["meta"]["smoke"] is True and "not a measurement" in res["meta"]["kind"]
    assert all("not a measurement" in res["steps"][s]["kind"] for s in FIGURES)
    summary = (out / "summary.md").read_text()
    rows = [r for r in summary.splitlines() if r.startswith("| (")]
    assert len(rows) == len(FIGURES) and all("| ok | " in r and "smoke value: " in r for r in rows), rows
    assert "bench32" not in summary and "measurement" in summary
    assert res["meta"]["commit"] is None or re.fullmatch(r"[0-9a-f]{40}", res["meta"]["commit"])
    steps = {s: res["steps"][s]["result"] for s in FIGURES}
    assert steps["env"]["torch"] == torch.__version__ and "dev_shm" in steps["env"]
    for s in ("step32", "restore32", "step128"):
        r = steps[s]
        assert r["task1_weights_exact_after_protected_step"] and r["task1_outputs_exact_after_protected_steps"]
    assert steps["step32"]["protection_mode"] == "mask" and steps["restore32"]["protection_mode"] == "restore"
    loop = steps["loop"]["runs"]
    assert [(r["batch_size"], r["protected"]) for r in loop] == [(2, False), (2, True), (4, False), (4, True)]
    assert all(r["images_per_s"] > 0 for r in loop)
    assert steps["decode"]["equal_within_tolerance"] and steps["decode"]["images"] == 4
    assert [r["decode"] for r in steps["loader"]["runs"]] == ["cpu", "gpu"]
    assert steps["distributed"]["ranks"] == 2 and steps["distributed"]["old_task_outputs_identical_on_both_ranks"]
    assert steps["offline"]["task_names"] == ["animals", "digits"] and all(steps["offline"]["outputs_identical"])
    assert steps["probe"]["processes"] == 2 and steps["probe"]["outputs_identical"] == [True, True]


# Imported here only because this environment has them: the packages that
# import them do so inside `try: ... except ImportError`, and carry on without
# them (as they did in the rehearsal, a venv of the GPU machine's packages alone).
OPTIONAL = {"defusedxml": "torchvision.datasets.voc", "platformdirs": "scipy.datasets._utils",
            "cython_runtime": "a module object Cython extensions register, not a package"}


def test_smoke_imports_only_what_the_gpu_machine_has(smoke):
    tmp, _ = smoke
    allowed = {line.strip().lower() for line in PACKAGES.read_text().splitlines() if line and line[0] != "#"}
    project = {"packnet_edu", "sitecustomize", "__main__", "__mp_main__", "gpu_evidence"} | {
        p.stem for p in (REPO / "tests").glob("*.py")}          # pytest imports the tests it runs
    dists = importlib.metadata.packages_distributions()
    logs = list((tmp / "imports").glob("*.txt"))
    # the parent, its three groups, pytest and the two ranks at least
    assert len(logs) >= 7, logs
    names = {n for f in logs for n in f.read_text().split()}
    assert {"packnet_edu", "torch", "torchvision", "sklearn"} <= names
    foreign = {}
    for name in sorted(names - set(sys.stdlib_module_names) - project - set(OPTIONAL)):
        owners = [re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(name, [])]
        if not owners:
            if name.startswith("_"):                 # built-in or CPython-private modules
                continue
            foreign[name] = "no package"
        elif not any(d in allowed or re.sub(r"-cu\d+$", "", d) in allowed for d in owners):
            foreign[name] = owners
    assert foreign == {}, f"imported, but not on the GPU machine: {foreign}"


def test_refuses_a_folder_holding_something(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--smoke"], check=False,
                          capture_output=True, text=True, timeout=60, env=_env())
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "not empty" in proc.stderr and (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_file_as_the_folder_is_one_line_error(tmp_path):
    """Issue 16, item 7: a regular file where the folder should be."""
    f = tmp_path / "FILE"
    f.write_text("mine")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(f), "--smoke"], check=False, capture_output=True, text=True,
                          timeout=60, env=_env())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ") and "file" in proc.stderr
    assert f.read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_without_a_gpu_says_to_use_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out")], check=False,
                          capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode != 0 and "no CUDA GPU" in proc.stderr and "--smoke" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_short_budget_says_what_happened(tmp_path):
    """Issue 16, item 16: a budget too short for the groups: each says it timed
    out after a real number of seconds or was not run; never a negative time
    (which group gets to start depends on the machine's speed)."""
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "ev"), "--smoke", "--budget", "6"],
                          check=False, capture_output=True, text=True, timeout=120, env=_env())
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    groups = res["meta"]["groups"]
    statuses = list(groups.values()) + [s["status"] for s in res["steps"].values()]
    assert proc.returncode != 0 and not any(re.search(r"-\d", s) for s in statuses), statuses
    assert all(re.fullmatch(r"(timed out after [0-9]+s \(limit [0-9]+s\)|not run: the budget of 6s was spent)", s)
               for s in groups.values()), groups
    assert all(s["status"] != "ok" for s in res["steps"].values())


def test_a_timeout_kills_the_whole_process_group(tmp_path):
    """A group that outlives its limit is killed with every process it started
    (here a grandchild, as DataLoader workers and ranks are)."""
    pid_file = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; "
            f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    t0 = time.time()
    with open(tmp_path / "log", "wb") as log:
        status = _script().run_child([sys.executable, "-c", code], log, dict(os.environ), 4)
    assert re.fullmatch(r"timed out after [4-9]s \(limit 4s\)", status) and time.time() - t0 < 30, status
    pid = int(pid_file.read_text())
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)                              # still there (or a zombie not yet reaped)?
            state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
            if state == "Z":
                break
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, 9)
        pytest.fail("the grandchild outlived the timeout")


def test_the_results_readme_documents_this_script():
    """benchmarks/results/README.md's run command parses, and its step table,
    group shares and budget are the script's."""
    ev = _script()
    text = (REPO / "benchmarks" / "results" / "README.md").read_text()
    command = re.search(r"\| `command` \| `(.+?)` \|", text).group(1)
    assert command == 'PYTHONUNBUFFERED=1 python3 scripts/gpu_evidence.py "$OUT" --commit <40-hex-hash>'
    args = ev.parse_args(["/tmp/out", "--commit", "0123456789abcdef0123456789abcdef01234567"])
    assert not args.smoke and args.budget is None and ev.BUDGET == 540
    assert re.search(r"\| `timeout_s` \| `600` \|", text) and re.search(r"\| `carry` \| `\[\]`", text)
    table = re.findall(r"^\| (\d+) \| (\w+) \|", text, flags=re.MULTILINE)
    assert [name for _, name in table] == [name for name, _, _ in ev.STEPS]
    assert f"({', '.join(f'{v:.2f}' for v in ev.GROUPS.values())} of the {ev.BUDGET} s budget" in text


def test_the_log_is_kept_under_its_limit(tmp_path):
    with open(tmp_path / "log.txt", "ab") as log:
        log.write(b"a" * 60 + b"b" * 40)
        _script()._cap(log, most=40)
        log.write(b"next group\n")
    text = (tmp_path / "log.txt").read_bytes()
    assert text.endswith(b"\n" + b"b" * 40 + b"next group\n") and b"a" not in text.split(b"\n", 1)[1]
