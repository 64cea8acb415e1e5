"""Where a number comes from: the code that computed it, the torch and
torchvision it ran on, and the data files it read.

Two users:
- the notebooks' result cache (cache.py): `code_hash()` covers the whole
  package except the modules named in NOT_COMPUTING, so a module added later
  is covered without anyone remembering to list it;
- recorded results (docs/compare/results.json, benchmarks/results): `record(entry)`
  stores the hash of each module that `entry` imports (directly or not), and
  `stale(recorded)` lists what changed since, so a test can fail on a record
  the current code would no longer produce.

Only code counts: comments, docstrings and blank lines are removed before
hashing (rewording a comment invalidates nothing). The text is cut from the
source file itself, not re-printed from a syntax tree, so the hash is the
same under every Python version. This module imports nothing from the
package: everything may import it.
"""
from __future__ import annotations

import ast
import hashlib
import io
import tokenize
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# Modules that cannot change a computed number. Everything else in the package
# is hashed, including modules added later. Keep this list short: a module
# listed here by mistake is a result that goes stale silently.
NOT_COMPUTING = {
    "plots.py": "figures",
    "widgets.py": "notebook controls that redraw figures",
    "report.py": "tables and report text from finished results",
    "cli.py": "argument parsing; every value goes through Config",
    "__main__.py": "calls cli.main",
    "fileio.py": "writes files atomically",
    "provenance.py": "this file: it hashes, it computes no result",
}

_MEMO: dict[tuple[str, int, int], tuple[str, set[str]]] = {}


# ------------------------------------------------------------ source
def package_modules() -> list[str]:
    """Every module file of the package, sorted: 'engine.py', ..."""
    return sorted(p.name for p in PACKAGE_DIR.glob("*.py"))


def _char_col(line: str, byte_col: int) -> int:
    """ast counts columns in UTF-8 bytes, tokenize in characters."""
    return len(line.encode()[:byte_col].decode(errors="ignore"))


def code_text(source: str) -> tuple[str, set[str]]:
    """(the source without comments, docstrings and blank lines, the names of
    the package modules it imports)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    cuts = []                                   # (line, col, end line, end col), lines from 1
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) \
                and isinstance(node.value.value, str):      # a docstring or a bare string: a no-op
            cuts.append((node.lineno, _char_col(lines[node.lineno - 1], node.col_offset),
                         node.end_lineno, _char_col(lines[node.end_lineno - 1], node.end_col_offset)))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            cuts.append((*tok.start, *tok.end))
    for l0, c0, l1, c1 in sorted(cuts, reverse=True):   # from the end: earlier positions stay valid
        lines[l0 - 1:l1] = [lines[l0 - 1][:c0] + lines[l1 - 1][c1:]]
    text = "\n".join(line.rstrip() for line in lines if line.strip())
    return text, _imports(tree)


def _imports(tree: ast.AST) -> set[str]:
    """Package modules imported anywhere in the module (inside functions too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:        # from .x import y / from . import x
            if node.module:
                found.add(node.module.split(".")[0] + ".py")
            else:
                found.update(a.name + ".py" if (PACKAGE_DIR / f"{a.name}.py").is_file() else "__init__.py"
                             for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("packnet_edu"):
            parts = node.module.split(".")
            found.add(parts[1] + ".py" if len(parts) > 1 else "__init__.py")
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] + ".py" for a in node.names
                         if a.name.startswith("packnet_edu.") and a.name.count(".") >= 1)
    return {m for m in found if (PACKAGE_DIR / m).is_file()}


def _module(name: str) -> tuple[str, set[str]]:
    """(hash of a module's code, the package modules it imports); read again when the file changes."""
    path = PACKAGE_DIR / name
    st = path.stat()
    memo_key = (name, st.st_mtime_ns, st.st_size)
    if memo_key not in _MEMO:
        text, imports = code_text(path.read_text(encoding="utf-8"))
        _MEMO[memo_key] = (hashlib.sha256(text.encode()).hexdigest()[:16], imports)
    return _MEMO[memo_key]


def computing_modules(entry: str | None = None) -> list[str]:
    """The modules whose code decides a result: with `entry` (e.g. "experiments"),
    that module and every package module it imports, directly or not; without,
    the whole package. Both minus NOT_COMPUTING; __init__.py always counts (every
    import of the package runs it)."""
    if entry is None:
        found = set(package_modules())
    else:
        todo, found = [entry if entry.endswith(".py") else entry + ".py", "__init__.py"], set()
        while todo:
            name = todo.pop()
            if name not in found:
                found.add(name)
                todo.extend(_module(name)[1])
    return sorted(found - set(NOT_COMPUTING))


def module_hashes(entry: str | None = None) -> dict[str, str]:
    """{module: hash of its code} for computing_modules(entry)."""
    return {name: _module(name)[0] for name in computing_modules(entry)}


def library_versions() -> dict[str, str | None]:
    """The installed torch and torchvision (None where missing), without importing them."""
    out = {}
    for dist in ("torch", "torchvision"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _digest(obj) -> str:
    return hashlib.sha256(repr(sorted(obj.items()) if isinstance(obj, dict) else obj).encode()).hexdigest()[:16]


def source_hash(entry: str | None = None) -> str:
    """One hash of the code of computing_modules(entry)."""
    return _digest(module_hashes(entry))


def code_hash(entry: str | None = None) -> str:
    """One hash of the code of computing_modules(entry) and the torch and
    torchvision versions: the identity of "the code that produced a number"."""
    return _digest({"source": source_hash(entry), **library_versions()})


# ------------------------------------------------------------ data files
_FILE_MEMO: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (read once per process while the file is unchanged)."""
    path = Path(path)
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if memo_key not in _FILE_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_MEMO[memo_key] = h.hexdigest()[:16]
    return _FILE_MEMO[memo_key]


def data_fingerprint(paths: Iterable[Path]) -> dict[str, str]:
    """{file name: content hash} of data files. Names, not paths, so that the
    same files elsewhere (another machine, another checkout) give the same
    fingerprint; a missing file is recorded as missing."""
    return {Path(p).name: (file_digest(p) if Path(p).is_file() else "missing") for p in paths}


# ------------------------------------------------------------ records
def record(entry: str, data_files: Sequence[Path] = ()) -> dict:
    """What a recorded result stores about its origin: the hash of each module
    `entry` runs, torch and torchvision, and the data files' fingerprint."""
    return {"code": code_hash(entry), "entry": entry, "modules": module_hashes(entry),
            **library_versions(), "data": data_fingerprint(data_files)}


def stale(recorded: dict | None, data_files: Sequence[Path] | None = None) -> list[str]:
    """Why a record is no longer what the current code would produce: one
    phrase per difference ("engine.py changed", "torch 2.14.1 -> 2.15.0"), an
    empty list when it still is. `data_files`: check the data too."""
    if not isinstance(recorded, dict) or "entry" not in recorded or "modules" not in recorded:
        return ["it carries no provenance (the code that produced it is unknown)"]
    now = record(recorded["entry"], data_files or ())
    why = []
    old, new = recorded["modules"], now["modules"]
    why += [f"{m} changed" for m in sorted(set(old) & set(new)) if old[m] != new[m]]
    why += [f"{m} is new in what it runs" for m in sorted(set(new) - set(old))]
    why += [f"{m} is no longer run" for m in sorted(set(old) - set(new))]
    why += [f"{lib} {recorded.get(lib)} -> {now[lib]}" for lib in ("torch", "torchvision")
            if recorded.get(lib) != now[lib]]
    if data_files is not None and recorded.get("data") != now["data"]:
        why.append(f"the data files differ ({recorded.get('data')} -> {now['data']})")
    return why
