"""Checks and settings the ``qlit`` command applies to a parsed config before it builds anything."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from qlit.data.tables import BUILTIN
from qlit.errors import QlitError


def subcommands_to_build(args: Any, names: Any) -> set[str] | None:
    """The subcommands whose parsers a command line needs in full; ``None`` for all of them.

    The subcommand is the first word that is not an option or the value of ``-c``/``--config``. Without one
    (``qlit --help``, a misspelt subcommand), no subcommand needs its arguments; parsed configs and a root
    config file, which may name the subcommand inside, get every parser.
    """
    if args is None:
        args = sys.argv[1:]
    if not isinstance(args, (list, tuple)) or not all(isinstance(arg, str) for arg in args):
        return None
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in ("-c", "--config"):
            return None  # a root-level config file may hold the subcommand
        elif arg.startswith("--config="):
            return None
        elif not arg.startswith("-"):
            return {arg} & set(names)
    return set()


def no_bars_without_a_terminal(config: Any) -> None:
    """Progress bars only on a terminal, unless the user asked (``--trainer.enable_progress_bar``).

    Sent to a file, a bar rewrites itself with carriage returns: hundreds of kilobytes for one fit, with
    qlit's own lines hidden after a ``\\r``.
    """
    trainer = config.get("trainer")
    if trainer is None or trainer.get("enable_progress_bar") is not None:
        return
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        trainer.enable_progress_bar = False


def refuse_new_samples_without_a_checkpoint(subcommand: str, config: Any) -> None:
    """Without its training data, a data module can only predict new samples, with everything else from a checkpoint.

    The data modules let a missing training table or fileset pass when ``predict_file`` is set (the model's size and
    classes then come from the checkpoint); any other command would build a model with nothing to size it from.
    """
    data_config = config.get("data")
    init = data_config.get("init_args") if data_config is not None and not isinstance(data_config, str) else None
    if init is None or not init.get("predict_file") or (subcommand == "predict" and config.get("ckpt_path")):
        return
    source = init.get("bed_file") or init.get("path")
    if source is None or str(source) in BUILTIN or Path(str(source)).exists():
        return
    raise QlitError(
        f"training data {source} not found: without it, the only command that runs is "
        f"qlit predict --ckpt_path best|last|FILE --data.predict_file {init.get('predict_file')}"
    )


def refuse_multi_process_cv(config: Any, subcommand: str = "cv") -> None:
    trainer = config.trainer
    strategy = str(trainer.get("strategy") or "auto")
    devices = trainer.get("devices")
    many = "ddp" in strategy or (trainer.get("num_nodes") or 1) > 1
    many = many or (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1)
    many = many or (isinstance(devices, str) and "," in devices)
    if many:
        raise QlitError(
            f"qlit {subcommand} trains each fold in one process; it cannot run under "
            f"--trainer.strategy {strategy} --trainer.devices {devices}: use one device per cv run, "
            "or qlit fit with DDP on one fold (--data.fold k)"
        )


