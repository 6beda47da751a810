"""Checks of the YAML files given with ``--config``, before LightningCLI reads them.

jsonargparse reads YAML with PyYAML, which keeps the last of two equal keys (a second ``model:``
section silently replaces the first) and reports broken or binary files without naming them.
qlit reads each config file once first and refuses those cases in one line that names the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from qlit.errors import QlitError


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key repeated within one mapping."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[object, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.MarkedYAMLError(
                problem=f"duplicate key {key!r} (first on line {seen[key] + 1}); YAML would keep only the last one",
                problem_mark=key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def config_paths(args: Sequence[str]) -> list[str]:
    """The paths given to ``--config`` (as ``--config X``, ``-c X`` or ``--config=X``) in a command line."""
    paths = []
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            paths.append(args[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def load_yaml_strict(path: str | Path, what: str = "config") -> Any:
    """The content of the YAML file ``path``; a `QlitError` naming it if it is missing, unreadable,
    binary, broken or repeats a key.

    Args:
        path: The file.
        what: What the file is, for messages ("config", "search space").
    """
    path = Path(path)
    if not path.exists():
        raise QlitError(f"{what} {path} does not exist")
    if not path.is_file():
        raise QlitError(f"{what} {path} is not a file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise QlitError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise QlitError(f"{what} {path} is not a YAML text file (it is not UTF-8 text)") from None
    if "\x00" in text:
        raise QlitError(f"{what} {path} is not a YAML text file (it holds binary data)")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise QlitError(f"{what} {path}: {where}{err.problem}") from None
    except yaml.YAMLError as err:
        raise QlitError(f"{what} {path} is not valid YAML: {str(err).splitlines()[0]}") from None


def check_config_file(path: str | Path) -> None:
    """Raise a `QlitError` naming ``path`` if it is missing, or not a readable YAML mapping without repeated keys."""
    content = load_yaml_strict(path)
    if content is not None and not isinstance(content, dict):
        kind = type(content).__name__
        raise QlitError(f"config {path} must be a mapping of keys (model:, data:, trainer:), not a {kind}")


def check_config_files(args: Sequence[str]) -> None:
    """`check_config_file` for every ``--config`` of a command line."""
    for path in config_paths(args):
        check_config_file(path)
