"""The run configuration: one dataclass, checked when it is made.

`Config` holds every hyperparameter of a run. Each field is validated (type and
range) as soon as a Config exists, so a wrong value is a one-line
`ConfigError` naming the field, before any data is loaded or any epoch runs.
The command line maps one flag to each field (`add_config_flags`,
`config_from_args`), and named presets or JSON files give starting values
(`load_config`). This module sits just above the engine: the training code,
the presets and the command line import it, it imports none of them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from .data import TASK_NAMES
from .engine import MAX_TASKS

PruneSpec = Union[float, Sequence[float], str]

# The image datasets of the paper's experiment (vgg_data.DATASETS; named here
# so that validating a config needs no image library).
IMAGE_TASK_NAMES = ("imagenet", "cubs", "cars", "flowers")
DEVICE_TYPES = ("cpu", "cuda", "mps")
DECODERS = ("cpu", "gpu", "pil")      # vgg_data's image paths


class ConfigError(ValueError):
    """A Config field with a wrong type or value; the message names the field."""


@dataclass(frozen=False)
class Config:
    """Every hyperparameter of a run. The defaults are the `make demo` run:
    the paper's schedule, shrunk to train four tasks in about two minutes on a
    2-core CPU."""
    tasks: Sequence[str] = TASK_NAMES
    model: str = "small_vgg"
    width: int = 16                 # channels of small_vgg's first layer
    prune: PruneSpec = "paper"      # see prune_schedule
    epochs: int = 3                 # training epochs per task
    first_task_epochs: Optional[int] = None  # task 1's (None: `epochs`; 0 for a pretrained task 1)
    retrain_epochs: int = 1         # post-prune fine-tuning epochs
    lr: float = 0.01
    retrain_lr: float = 0.001
    lr_step: Optional[int] = None   # multiply lr by 0.1 every lr_step epochs
    momentum: float = 0.9
    weight_decay: float = 0.0       # any value is safe: the engine restores frozen weights
    batch_size: int = 64
    max_train: Optional[int] = 10000  # cap on each task's training split (None: all)
    seed: int = 0
    device: str = "cpu"
    amp: bool = False               # bf16 autocast (CUDA)
    channels_last: bool = False     # NHWC weights: the layout GPU convolutions are fastest in
    workers: int = 0                # data loader processes (image folders; tensors need none)
    decode: str = "cpu"             # JPEG decoding of image folders: "cpu", "gpu" (nvJPEG) or "pil"
    data_root: Optional[str] = None  # where prepared image datasets live (VGG-16 pipeline)
    weights: Optional[str] = None   # VGG-16 start: None, "imagenet" or a state-dict file

    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        if isinstance(self.prune, (list, tuple)):
            d["prune"] = list(self.prune)
        return d


def prune_schedule(spec: PruneSpec, num_tasks: int) -> List[float]:
    """The prune ratio of each task, in one place.

    "paper": the paper's schedule: first task 0.5, later tasks 0.75, the last
             task not pruned (it keeps every weight that is left);
    "equal": equal capacity for every task, ratio_t = 1 - 1/(T - t), t from 0;
    a number r: r for every task but the last, which is not pruned;
    a list: one ratio per task.
    """
    if spec == "paper":
        ratios = [0.5] + [0.75] * (num_tasks - 2) + [0.0] if num_tasks > 1 else [0.0]
    elif spec == "equal":
        ratios = [1.0 - 1.0 / (num_tasks - t) for t in range(num_tasks)]
    elif _is_real(spec):
        ratios = [float(spec)] * (num_tasks - 1) + [0.0]
    elif isinstance(spec, (list, tuple)) and all(_is_real(r) for r in spec):
        ratios = [float(r) for r in spec]
        if len(ratios) != num_tasks:
            raise ValueError(f"{len(ratios)} prune ratios for {num_tasks} tasks: give one per task")
    else:
        raise ValueError(f"prune schedule {spec!r}: use 'paper', 'equal', a number or a list")
    bad = [r for r in ratios if not 0.0 <= r < 1.0]
    if bad:
        raise ValueError(f"prune ratios must lie in [0, 1), got {bad}")
    return ratios


# ------------------------------------------------------------- validation
def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _fail(name: str, want: str, value) -> None:
    raise ConfigError(f"config field '{name}' must be {want}, got {value!r}")


def _check_int(cfg, name: str, low: int, optional: bool = False, what: str = "") -> None:
    v = getattr(cfg, name)
    if v is None and optional:
        return
    if not _is_int(v) or v < low:
        _fail(name, what or f"an integer >= {low}" + (" or None" if optional else ""), v)
    setattr(cfg, name, int(v))


def _check_float(cfg, name: str, low: float, high: float = math.inf, low_open: bool = False,
                 high_open: bool = True) -> None:
    v = getattr(cfg, name)
    ok = _is_real(v) and math.isfinite(v) and (v > low if low_open else v >= low) \
        and (v < high if high_open else v <= high)
    if not ok:
        lo = f"> {low}" if low_open else f">= {low}"
        hi = "" if high == math.inf else (f" and < {high}" if high_open else f" and <= {high}")
        _fail(name, f"a finite number {lo}{hi}", v)
    setattr(cfg, name, float(v))


def _check_bool(cfg, name: str) -> None:
    if not isinstance(getattr(cfg, name), bool):
        _fail(name, "true or false (a boolean, not a string)", getattr(cfg, name))


def _check_optional_str(cfg, name: str) -> None:
    v = getattr(cfg, name)
    if v is not None and not (isinstance(v, (str, Path)) and str(v)):
        _fail(name, "a non-empty string or None", v)
    if isinstance(v, Path):
        setattr(cfg, name, str(v))


def validate(cfg: Config) -> None:
    """Check (and normalise: task lists to tuples, ints to floats) every field."""
    for name in ("data_root", "weights"):
        _check_optional_str(cfg, name)
    tasks = cfg.tasks
    if isinstance(tasks, str) or not isinstance(tasks, (list, tuple)) \
            or not all(isinstance(t, str) for t in tasks):
        _fail("tasks", "a list of task names such as [\"fashion\", \"mnist\"]", tasks)
    if not 1 <= len(tasks) <= MAX_TASKS:
        _fail("tasks", f"between 1 and {MAX_TASKS} task names (owners are stored in uint8)", len(tasks))
    if not all(tasks):
        _fail("tasks", "non-empty task names", tasks)
    cfg.tasks = tuple(tasks)
    if not isinstance(cfg.model, str) or not cfg.model:
        _fail("model", "a model name such as small_vgg or vgg16", cfg.model)
    _check_int(cfg, "width", 1)
    _check_int(cfg, "epochs", 1)
    _check_int(cfg, "first_task_epochs", 0, optional=True)
    _check_int(cfg, "retrain_epochs", 0)
    _check_float(cfg, "lr", 0.0, low_open=True)
    _check_float(cfg, "retrain_lr", 0.0, low_open=True)
    _check_int(cfg, "lr_step", 1, optional=True)
    _check_float(cfg, "momentum", 0.0, 1.0)
    _check_float(cfg, "weight_decay", 0.0)
    _check_int(cfg, "batch_size", 1)
    _check_int(cfg, "max_train", 1, optional=True)
    _check_int(cfg, "seed", 0, what="an integer in [0, 2**63)")
    if cfg.seed >= 2 ** 63:
        _fail("seed", "an integer in [0, 2**63)", cfg.seed)
    _check_int(cfg, "workers", 0)
    if cfg.decode not in DECODERS:
        _fail("decode", " or ".join(repr(d) for d in DECODERS), cfg.decode)
    for name in ("amp", "channels_last"):
        _check_bool(cfg, name)
    dev = cfg.device
    if not isinstance(dev, str) or dev.split(":")[0] not in DEVICE_TYPES \
            or (":" in dev and not dev.split(":", 1)[1].isdigit()):
        _fail("device", "cpu, cuda, cuda:N or mps", dev)
    _check_prune(cfg)


def _check_prune(cfg: Config) -> None:
    spec = cfg.prune
    if isinstance(spec, str) and spec not in ("paper", "equal"):
        _fail("prune", "'paper', 'equal', a ratio in [0, 1) or one ratio per task", spec)
    try:
        ratios = prune_schedule(spec, len(cfg.tasks))
    except ValueError as err:
        raise ConfigError(f"config field 'prune': {err}") from None
    # A task that releases nothing leaves no free weight for the next one:
    # found here, not after hours of training the earlier tasks.
    starved = [t for t, r in enumerate(ratios[:-1], start=1) if r == 0.0]
    if starved:
        raise ConfigError(f"config field 'prune': task(s) {starved} are not pruned (ratio 0), so task "
                          f"{starved[0] + 1} would find no free weight; only the last task may have ratio 0")
    if isinstance(spec, (list, tuple)):
        cfg.prune = [float(r) for r in spec]
    elif _is_real(spec):
        cfg.prune = float(spec)


# ------------------------------------------------------------- presets and files
def load_config(name_or_file: str, presets: Dict[str, Config]) -> dict:
    """The field values of preset `name_or_file`, or of a JSON file of fields."""
    if name_or_file in presets:
        return presets[name_or_file].to_dict()
    try:
        values = json.loads(Path(name_or_file).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"--config {name_or_file} is neither a preset ({', '.join(presets) or 'none'}) "
                          f"nor a readable JSON file ({err})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {name_or_file}: the JSON file must hold an object of Config "
                          f"fields, e.g. {{\"epochs\": 5}}, not a {type(values).__name__}")
    unknown = set(values) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise ConfigError(f"unknown keys in {name_or_file}: {sorted(unknown)}; "
                          f"valid keys: {[f.name for f in dataclasses.fields(Config)]}")
    return values


# ------------------------------------------------------------- command-line flags
def parse_prune(text: str):
    """'paper', 'equal', '0.75' or '0.5,0.75,0.75,0'."""
    if text in ("paper", "equal"):
        return text
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 'paper', 'equal', a ratio such as 0.75, or one per task: 0.5,0.75,0.75,0")
    return values[0] if len(values) == 1 else values


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: use true or false")


def _optional_int(text: str) -> Optional[int]:
    if text.lower() in ("none", "all"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number, or 'none'") from None


def _typed(kind):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    return parse


def at_least(low: float, kind=int):
    """An argparse type: a number of `kind` >= low (e.g. at_least(1) for counts)."""
    parse = _typed(kind)

    def checked(text: str):
        value = parse(text)
        if not (value >= low and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a{' whole' if kind is int else ''} "
                                             f"number >= {low}")
        return value
    return checked


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field, default None (= keep the config file's or default value)."""
    parser.add_argument("--config", help="a named preset (e.g. paper-vgg16) or a JSON file "
                                         "of Config fields; flags override it")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kwargs = {"default": None, "help": f"(default: {default})"}
        if f.name == "tasks":
            kwargs.update(nargs="+")
        elif f.name == "prune":
            kwargs.update(type=parse_prune, help="'paper' (0.5, 0.75, ..., last 0), 'equal' (1 - 1/(T - t)), "
                                                 "a ratio, or a comma list, one per task (default: paper)")
        elif f.name in ("max_train", "lr_step", "first_task_epochs"):
            kwargs.update(type=_optional_int)
        elif isinstance(default, bool):
            kwargs.update(type=parse_bool)
        elif isinstance(default, (int, float)):
            kwargs.update(type=_typed(type(default)))
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace, presets: Optional[Dict[str, Config]] = None) -> Config:
    """The Config of parsed flags: the preset or JSON file of --config, then each flag given.
    Raises ConfigError (one line, naming the field) for any invalid value."""
    values = {}
    name = getattr(args, "config", None)
    if name:
        values = load_config(name, presets or {})
    for f in dataclasses.fields(Config):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    cfg = Config(**values)
    check_task_names(cfg)
    check_model_name(cfg)
    check_device(cfg)
    return cfg


def check_model_name(cfg: Config) -> None:
    """Refuse a model name models.build_model does not know (code may pass its
    own model), or one that cannot take the run's data or weights."""
    from .models import BUILDERS
    if cfg.model not in BUILDERS:
        raise ConfigError(f"config field 'model': unknown model {cfg.model!r}; choose one of "
                          f"{', '.join(sorted(BUILDERS))}")
    check_model_inputs(cfg.model, cfg.data_root, cfg.weights)


# The small network's inputs: the offline tasks' 28x28 grayscale images.
GRAYSCALE_MODELS = ("small_vgg",)


def check_model_inputs(model: str, data_root, weights) -> None:
    """small_vgg takes 28x28 grayscale images and starts from random weights:
    refuse the RGB photos of --data-root and a --weights file for it, which
    would otherwise fail (or be ignored) only after the data has loaded."""
    if model not in GRAYSCALE_MODELS:
        return
    if data_root is not None:
        raise ConfigError(f"--data-root holds RGB photos (the paper's datasets), but model {model!r} takes "
                          "28x28 grayscale images: pass --model vgg16 (or vgg16_bn, resnet50, densenet121), "
                          "or leave out --data-root for the offline tasks")
    if weights is not None:
        raise ConfigError(f"--weights {weights}: model {model!r} starts from random weights; --weights is "
                          "for vgg16, vgg16_bn, resnet50 and densenet121")


def check_task_names(cfg: Config) -> None:
    """Refuse task names the loaders do not know. (Code that passes its own
    Task objects to run_packnet may name them as it likes.)"""
    known = IMAGE_TASK_NAMES if cfg.data_root is not None else TASK_NAMES
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        where = "with --data-root (image datasets)" if cfg.data_root is not None else "offline (no --data-root)"
        raise ConfigError(f"config field 'tasks': unknown task(s) {unknown}; the tasks {where} are "
                          f"{', '.join(known)}")


def check_device(cfg: Config) -> None:
    """Refuse a device this machine does not have (before any data is loaded)."""
    import torch
    kind, _, index = cfg.device.partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}, but no CUDA GPU is visible here: use --device cpu "
                          "(a preset made for GPUs also needs --amp false --channels-last false to run well on a CPU)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {cfg.device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps, but the MPS backend is not available here: use --device cpu")
    if cfg.decode == "gpu" and kind != "cuda":     # nvJPEG on a CPU tensor would silently decode on the CPU
        raise ConfigError(f"--decode gpu decodes JPEGs with nvJPEG on a CUDA GPU, but the device is "
                          f"{cfg.device}: pass --device cuda, or --decode cpu")
