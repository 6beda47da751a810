"""Search spaces for ``qlit tune``: a YAML file mapping config keys to Ray Tune distributions.

Example (``configs/space/genomic.yaml``)::

    model.lr: {loguniform: [0.001, 0.1]}
    model.n_layers: {randint: [1, 5]}        # 1..4: Ray's randint excludes the upper bound
    model.ansatz: {choice: [basic, strong]}
    data.batch_size: {grid: [16, 32]}        # every value, times num_samples

Keys are the config's own, from an allow-list (`TUNABLE`): any ``model.<arg>`` but the ones the data sets
(``in_features``, ``num_classes``, ``class_names``), ``data.batch_size`` and ``data.n_components``, and the
trainer's ``max_epochs``, ``min_epochs``, ``gradient_clip_val``, ``gradient_clip_algorithm`` and
``accumulate_grad_batches``. Everything else is refused before Ray starts: a data key such as ``threshold``,
``horizon`` or ``path`` would change the task (the rows or the labels), so "tuned" and "untuned" would no
longer be scored on the same problem. Each value names one distribution and its arguments.
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
# What a trial may change: how the model is built and trained, never which rows there are, their labels or
# their split. Every model argument is tunable but those the data module sets.
TUNABLE = {
    "data": ("batch_size", "n_components"),
    "trainer": ("max_epochs", "min_epochs", "gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches"),
}
LINKED = ("in_features", "num_classes", "class_names")


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


def tunable(section: str, name: str) -> bool:
    """Whether ``<section>.<name>`` is on the allow-list of keys a search may change."""
    if section == "model":
        return name not in LINKED
    return name in TUNABLE.get(section, ())


def _check_key(path: Path, key: str, config: Namespace) -> None:
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name or "." in name:
        raise QlitError(f"{path}: {key!r} is not a config key to tune; use model.<arg>, data.<arg> or trainer.<arg>")
    if section == "data":
        options, owner = config.data.get("init_args") or Namespace(), config.data.class_path
    else:
        options, owner = config.get(section) or Namespace(), section
    if not tunable(section, name):
        allowed = (
            "any model.<arg> but " + ", ".join(LINKED)
            if section == "model"
            else ", ".join(f"{section}.{k}" for k in TUNABLE[section] if section != "data" or k in vars(options))
        )
        raise QlitError(
            f"{path}: {key} cannot be tuned: tuning may change how the model is built and trained, not the rows, "
            f"labels, split or logs it is scored on; {section} keys that can: {allowed or 'none'}"
        )
    if name not in vars(options):
        known = ", ".join(sorted(k for k in vars(options) if tunable(section, k)))
        raise QlitError(f"{path}: {key}: {owner} has no option {name!r}; tunable ones: {known}")


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
    return _assign(config.clone(), overrides)


def apply_to_dict(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``apply`` for a config loaded from YAML (``best_config.yaml``), changed in place."""
    return _assign(config, overrides)


def _assign(config: Any, overrides: Mapping[str, Any]) -> Any:
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        value = value.item() if hasattr(value, "item") else value  # numpy scalars from Ray's samplers
        target = config["data"]["init_args"] if section == "data" else config[section]
        target[name] = value
    return config
