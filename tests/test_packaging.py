"""environment.yml (conda) and pyproject.toml (pip) name the same dependencies."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pyproject_names():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {_name(r) for r in reqs}


def environment_names():
    names, in_deps = set(), False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        m = re.match(r"\s*-\s+([^\s#]+)", line)
        if in_deps and m and not m.group(1).endswith(":") and m.group(1) not in ("-e", "."):
            names.add(_name(m.group(1).split("=")[0] if "==" not in m.group(1) else m.group(1)))
    return names - {"python", "pip", "-e"}


def test_environment_yml_and_pyproject_agree():
    assert pyproject_names() == environment_names()


def test_the_test_helper_sees_real_names():
    assert {"torch", "torchvision", "jupyterlab", "ipywidgets", "matplotlib", "seaborn"} <= pyproject_names()
