"""Build a run (model, data module, trainer) from a parsed qlit config, as every command and job does.

`RunBuilder` is LightningCLI with qlit's classes and conventions and no subcommands: the ``qlit`` command
(`qlit.cli.QlitCLI`) extends it with the subcommands, and cv folds and tuning trials call `build_run` on a copy
of the command's config. So a fold trains exactly what ``qlit fit`` with the fold's saved config would.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies import DDPStrategy

from qlit.callbacks import PredictionWriter, RunSummary
from qlit.callbacks.safety import GracefulStop, NonFiniteGuard
from qlit.data import KFoldDataModule
from qlit.engine.parser import QlitArgumentParser
from qlit.io.checkpoints import SafeCheckpointIO
from qlit.io.runs import unused_path
from qlit.models import HybridClassifier
from qlit.runtime import ddp_timeout

# The data module's sizes and class names set the model's, so a config never states them twice.
LINKS = (("num_features", "in_features"), ("num_classes", "num_classes"), ("class_names", "class_names"))


class QlitSaveConfig(SaveConfigCallback):
    """Save the run's full config in its run folder without overwriting one saved earlier.

    The first run writes ``config.yaml``; a resumed fit or a later test or predict on the same run
    writes ``config_<stage>.yaml`` (or ``config_<stage>_1.yaml``, …) beside it.
    """

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.already_saved and trainer.log_dir is not None:
            log_dir = Path(trainer.log_dir)
            stage_name = getattr(stage, "value", stage)  # Lightning passes a TrainerFn enum
            first_fit = stage_name == "fit" and not (log_dir / "config.yaml").exists()
            name = "config.yaml" if first_fit else f"config_{stage_name}.yaml"
            self.config_filename = unused_path(log_dir / name).name
        super().setup(trainer, pl_module, stage)


class RunBuilder(LightningCLI):
    """LightningCLI that builds qlit's model, data module and trainer (``run=False``: builds, runs nothing)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault(
            "trainer_defaults",
            {"callbacks": [PredictionWriter(), NonFiniteGuard(), GracefulStop(), RunSummary()]},
        )
        kwargs.setdefault("parser_kwargs", {"description": "Train hybrid quantum-classical classifiers (qlit)."})
        # The model builds its own Adam and ReduceLROnPlateau (model.lr, model.lr_factor, ...).
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("save_config_callback", QlitSaveConfig)
        kwargs.setdefault("parser_class", QlitArgumentParser)
        super().__init__(HybridClassifier, KFoldDataModule, *args, subclass_mode_data=True, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in LINKS:
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        with warnings.catch_warnings():
            # A parsed config or an argument list handed in (tests, cv folds, tuning trials) is how qlit builds
            # runs in-process: that it ignores sys.argv is the point, not a mistake to warn about.
            warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within")
            super().parse_arguments(parser, args)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        subcommand = self.config.get("subcommand")
        trainer_config = self.config_init[subcommand]["trainer"] if subcommand else self.config_init["trainer"]
        if _is_cpu_ddp(trainer_config):
            trainer_config["strategy"] = DDPStrategy(timeout=ddp_timeout())
        if not trainer_config.get("plugins"):
            kwargs.setdefault("plugins", [SafeCheckpointIO()])  # atomic checkpoint writes, weights-only reads
        return super().instantiate_trainer(**kwargs)


def build_run(config: Namespace) -> RunBuilder:
    """The model, data module and trainer of a parsed config (``.model``, ``.datamodule``, ``.trainer``)."""
    return RunBuilder(args=config, run=False)


def _is_cpu_ddp(trainer_config: dict[str, Any]) -> bool:
    strategy = trainer_config.get("strategy")
    accelerator = str(trainer_config.get("accelerator") or "auto")
    cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return cpu and isinstance(strategy, str) and strategy in ("ddp", "ddp_find_unused_parameters_true")
