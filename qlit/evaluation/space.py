"""Search spaces for ``qlit tune``: a YAML file mapping config keys to Ray Tune distributions.

Example (``configs/space/genomic.yaml``)::

    model.lr: {loguniform: [0.001, 0.1]}
    model.n_layers: {randint: [1, 5]}        # 1..4: Ray's randint excludes the upper bound
    model.ansatz: {choice: [basic, strong]}
    data.batch_size: {grid: [16, 32]}        # every value, times num_samples

Keys are the config's own: ``model.<arg>``, ``data.<arg>`` (the data module's ``init_args``) and
``trainer.<arg>``. Each value names one distribution and its arguments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from qlit.errors import QlitError
from qlit.io.config_files import load_yaml_strict

RANGES = ("uniform", "loguniform", "randint", "lograndint", "quniform", "qloguniform", "qrandint", "qlograndint")
LISTS = ("choice", "grid")
NORMAL = ("randn", "qrandn")
DISTRIBUTIONS = RANGES + LISTS + NORMAL
SECTIONS = ("model", "data", "trainer")
# What a trial may not change: the split, which rows are held out, and where the folds log.
FIXED = {
    "data.fold",
    "data.num_folds",
    "data.split_seed",
    "data.inner_folds",
    "data.inner_fold",
    "trainer.logger",
    "trainer.callbacks",
    "trainer.default_root_dir",
    "data.predict_file",
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_distribution(path: Path, key: str, spec: Any) -> tuple[str, list[Any]]:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise QlitError(f"{path}: {key} must map to one distribution, e.g. {{loguniform: [0.001, 0.1]}}; got {spec!r}")
    ((name, args),) = spec.items()
    if name not in DISTRIBUTIONS:
        raise QlitError(f"{path}: {key}: unknown distribution {name!r}; Ray Tune has {', '.join(DISTRIBUTIONS)}")
    args = list(args) if isinstance(args, (list, tuple)) else [args]
    if name in LISTS:
        if not args:
            raise QlitError(f"{path}: {key}: {name} needs at least one value, got an empty list")
        return name, args
    quantized = name.startswith("q")
    expected = (3 if quantized else 2) if name not in NORMAL else (3 if quantized else 2)
    if len(args) != expected or not all(_number(a) for a in args):
        what = "mean, sd" if name in NORMAL else "low, high"
        raise QlitError(f"{path}: {key}: {name} takes [{what}{', q' if quantized else ''}] as numbers, got {args!r}")
    if quantized:
        _check_step(path, key, name, args)
    if name in NORMAL:
        if args[1] <= 0:
            raise QlitError(f"{path}: {key}: {name} needs a positive sd, got {args[1]!r}")
        return name, args
    low, high = args[0], args[1]
    if not low < high:
        raise QlitError(f"{path}: {key}: {name} range [{low}, {high}] is empty or inverted; low must be below high")
    if "log" in name and low <= 0:
        raise QlitError(f"{path}: {key}: {name} needs a positive lower bound, got {low!r}")
    if "int" in name and not all(float(a).is_integer() for a in (low, high)):
        raise QlitError(f"{path}: {key}: {name} bounds must be integers, got [{low}, {high}]")
    if name == "randint" and high - low < 1:
        raise QlitError(f"{path}: {key}: randint [{low}, {high}] holds no integer (the upper bound is excluded)")
    if quantized:
        _check_grid(path, key, name, low, high, args[2])
    return name, args


def _check_step(path: Path, key: str, name: str, args: list[Any]) -> None:
    """The step ``q`` of a quantized distribution: positive, and whole for the integer ones."""
    q = args[2]
    if q <= 0:
        raise QlitError(f"{path}: {key}: {name} needs a positive step q, got q={q!r}")
    if "int" in name and not float(q).is_integer():
        raise QlitError(f"{path}: {key}: {name} needs a whole-number step q, got q={q!r}")


def _multiple(value: float, q: float) -> bool:
    return math.isclose(value / q, round(value / q))


def _check_grid(path: Path, key: str, name: str, low: float, high: float, q: float) -> None:
    """What Ray Tune would refuse only when sampling: bounds off the step's grid, or a range without a multiple."""
    if "int" not in name:
        for bound in (low, high):
            if not _multiple(bound, q):
                raise QlitError(
                    f"{path}: {key}: {name} bounds [{low}, {high}] must be multiples of the step q={q!r}; "
                    f"{bound!r} is not"
                )
    elif math.floor(high / q) < math.ceil(low / q) and not (_multiple(low, q) or _multiple(high, q)):
        raise QlitError(f"{path}: {key}: {name} [{low}, {high}] holds no multiple of the step q={q!r}")


def _check_key(path: Path, key: str, config: Namespace) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name or "." in name:
        raise QlitError(f"{path}: {key!r} is not a config key to tune; use model.<arg>, data.<arg> or trainer.<arg>")
    if key in FIXED:
        raise QlitError(f"{path}: {key} cannot be tuned: it fixes the folds or where they log")
    if section == "data":
        options, owner = config.data.get("init_args") or Namespace(), config.data.class_path
    else:
        options, owner = config.get(section) or Namespace(), section
    if name not in vars(options):
        known = ", ".join(sorted(k for k in vars(options) if f"{section}.{k}" not in FIXED))
        raise QlitError(f"{path}: {key}: {owner} has no option {name!r}; it has {known}")


def read_space(path: str | Path, config: Namespace) -> dict[str, tuple[str, list[Any]]]:
    """Read and check a search-space file against the config it tunes.

    Returns:
        ``{config key: (distribution name, its arguments)}``.
    """
    path = Path(path)
    content = load_yaml_strict(path, "search space")
    if not isinstance(content, Mapping) or not content:
        raise QlitError(f"{path}: a search space maps config keys to distributions; the file holds none")
    space = {}
    for key, spec in content.items():
        key = str(key)
        _check_key(path, key, config)
        space[key] = _check_distribution(path, key, spec)
    return space


def ray_space(space: Mapping[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """The same space as Ray Tune sampling objects (``tune.loguniform``, ``tune.grid_search``, ...)."""
    from ray import tune

    out = {}
    for key, (name, args) in space.items():
        if name == "grid":
            out[key] = tune.grid_search(args)
        elif name == "choice":
            out[key] = tune.choice(args)
        elif "int" in name:
            out[key] = getattr(tune, name)(*(int(a) for a in args))
        else:
            out[key] = getattr(tune, name)(*args)
    return out


def apply(config: Namespace, overrides: Mapping[str, Any]) -> Namespace:
    """A copy of ``config`` with ``{"model.lr": 0.01, "data.batch_size": 16, ...}`` set."""
    config = config.clone()
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        value = value.item() if hasattr(value, "item") else value  # numpy scalars from Ray's samplers
        target = config.data.init_args if section == "data" else config[section]
        target[name] = value
    return config


def apply_to_dict(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``apply`` for a config loaded from YAML (``best_config.yaml``)."""
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        value = value.item() if hasattr(value, "item") else value
        target = config["data"]["init_args"] if section == "data" else config[section]
        target[name] = value
    return config
