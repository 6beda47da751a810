"""Parsing a qlit config: LightningCLI's parser, with errors cut to one line that names the key at fault.

jsonargparse reports a bad value deep inside a union of data-module classes, over many lines; a user needs the
innermost key and its reason (``--data.val_fraction: expected a float, got nan``), and for a misspelt key the
closest valid one.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from qlit.runtime import debugging


def fail(message: str) -> NoReturn:
    """Print ``qlit: error: <message>`` on stderr and exit with status 2, as every bad input does."""
    print(f"qlit: error: {message}", file=sys.stderr)
    sys.exit(2)


class QlitArgumentParser(LightningArgumentParser):
    """Argument parser whose errors are one line (the full usage only with ``--help``)."""

    def format_help(self) -> str:
        """qlit's own options, the model and the data first; Lightning's Trainer (hundreds of lines) last."""
        groups = self._action_groups

        def rank(group: Any) -> int:
            dests = [action.dest for action in group._group_actions]
            if any(dest.startswith("trainer.") or dest == "trainer" for dest in dests):
                return 2
            return 0 if not dests or all("." not in dest for dest in dests) else 1

        usage = self.usage
        subcommand = any(action.dest == "data" for action in self._actions)
        if subcommand:  # argparse would list every option in the usage: sixty lines before the first help line
            self.usage = f"{self.prog} [-h] [-c CONFIG] [--ckpt_path best|last|FILE] [--model.* ...] [--data.* ...] " \
                "[--trainer.* ...]"
        self._action_groups = sorted(groups, key=rank)  # sorted is stable: the order within a rank stays
        try:
            text = super().format_help()
        finally:
            self._action_groups, self.usage = groups, usage
        if subcommand:
            hint = (
                "The data module's own options: --data.help NAME, with NAME one of IrisDataModule, SNPDataModule,\n"
                "PlinkDataModule, TabularDataModule or EquityDataModule (or the class of your config's data).\n"
            )
            text = text.replace("\noptions:\n", f"\n{hint}\noptions:\n", 1)
        return text

    def error(self, message: str, ex: Exception | None = None):
        if debugging() or not self.exit_on_error:
            return super().error(message, ex)
        line = _unknown_option(str(message), self) or _one_line(str(message))
        fail(line)

    # Lightning dumps every run's config twice (the modules' hyperparameters, the run folder's config.yaml), and a
    # cv fold or tuning trial is a run of its own. Each dump checked every value again, all of which the parser had
    # checked when it parsed the config: a tenth of the CPU time of a small 3-fold `qlit cv`. Output is unchanged.
    def dump(self, namespace: Any, *args: Any, **kwargs: Any) -> str:
        """The config as text, without checking again the values that parsing already checked."""
        kwargs.setdefault("skip_validation", True)
        return super().dump(namespace, *args, **kwargs)

    def save(self, namespace: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        """Write the config to ``path``, without checking again the values that parsing already checked."""
        kwargs.setdefault("skip_validation", True)
        super().save(namespace, path, *args, **kwargs)


def _option_strings(parser: Any) -> list[str]:
    """Every ``--option`` a parser and its subcommands' parsers accept."""
    found: list[str] = []
    for action in getattr(parser, "_actions", []):
        found.extend(s for s in action.option_strings if s.startswith("--"))
        for sub in (getattr(action, "choices", None) or {}).values() if hasattr(action, "_name_parser_map") else ():
            found.extend(_option_strings(sub))
    return found


def class_of(class_path: str) -> type:
    """The class a config's ``class_path`` names (``qlit.data.IrisDataModule``), imported."""
    module_name, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _init_options(class_path: str) -> list[str]:
    """The constructor arguments of ``class_path`` and of the classes it extends (its YAML ``init_args``)."""
    try:
        cls = class_of(class_path)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        names.extend(p.name for p in inspect.signature(init).parameters.values() if p.kind in kinds)
    return [n for n in dict.fromkeys(names) if n != "self"]


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_option(message: str, parser: Any) -> str | None:
    """A misspelt option, on the command line or in a config file, named with the closest valid one.

    jsonargparse reports a wrong data-module argument as a failed union of data classes and keeps the useful
    "Option 'clases' is not accepted" nested below it; a wrong model or trainer key comes as "unrecognized
    arguments" or "does not accept option", without a suggestion.
    """
    option = re.search(r"Option '([^']+)' is not accepted", message)
    if option:
        key = option.group(1)
        class_path = re.search(r"class_path '([\w.]+)'", message)
        owner = class_path.group(1) if class_path else None
        group = re.search(r'Parser key "(\w+)"', message)
        where = f"--{group.group(1)}.init_args.{key}" if group else f"--{key}"
        owner_name = owner.rpartition(".")[2] if owner else "the data module"
        return f"{where}: {owner_name} has no option {key!r}{_did_you_mean(key, _init_options(owner) if owner else [])}"
    choice = re.search(r"argument subcommand: invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        names = re.findall(r"'([^']+)'", choice.group(2))
        return f"no subcommand {choice.group(1)!r}{_did_you_mean(choice.group(1), names)} (qlit --help lists them)"
    unknown = re.search(r"unrecognized arguments: (--[\w.-]+)", message) or re.search(
        r"does not accept options? '([\w.-]+)'", message
    )
    if unknown:
        key = unknown.group(1)
        flag = key if key.startswith("--") else f"--{key}"
        options = list(dict.fromkeys(o.split("=")[0] for o in _option_strings(parser)))
        suggestion = _did_you_mean(flag, options)
        if not key.startswith("--"):  # a key of a config file is named as written there, without dashes
            suggestion = suggestion.replace("'--", "'")
        return f"{flag}: no such option{suggestion}"
    return None


def _one_line(message: str) -> str:
    """jsonargparse's multi-line report, cut to the innermost key at fault and its reason.

    A bad ``--data.val_fraction`` is reported as a failed union of data-module classes, with the
    real reason nested below; the user needs the nested one: ``--data.val_fraction: expected a
    float, got nan``.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    keys, reason = [], None
    for i, line in enumerate(lines):
        match = re.match(r'(?:- )?Parser key "([^"]+)":', line)
        if match:
            keys.append(match.group(1))
            following = lines[i + 1] if i + 1 < len(lines) else ""
            if following and not following.startswith(("Does not validate", "- Parser key", "Parser key")):
                reason = following.lstrip("- ")
                break
    if not keys:
        return " ".join(lines[:3])
    reason = reason or next((line for line in lines[1:] if not line.startswith(("Subtypes", "Errors"))), lines[0])
    reason = re.sub(r"<class '([\w.]+)'>", r"\1", reason)
    path = ".".join(dict.fromkeys(k for key in keys for k in key.split(".")))
    return f"--{path}: {reason}"
