"""The ``qlit`` command line: LightningCLI with qlit's models, data and run-folder conventions."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from qlit import callbacks, data  # noqa: F401  (imported so configs can name their classes briefly)
from qlit.callbacks import PredictionWriter
from qlit.callbacks.safety import GracefulStop, NonFiniteGuard, TrainingInterrupted
from qlit.checkpoint_io import install as install_checkpoint_io
from qlit.checkpoint_io import load_checkpoint
from qlit.cv import QlitTrainer, cross_validate
from qlit.data import KFoldDataModule
from qlit.errors import QlitError
from qlit.models import HybridClassifier
from qlit.preflight import preflight
from qlit.runs import resolve_checkpoint, tensorboard_loggers, unused_path, version_of

DEBUG_ENV = "QLIT_DEBUG"


def _fail(message: str) -> None:
    print(f"qlit: error: {message}", file=sys.stderr)
    sys.exit(2)


class QlitArgumentParser(LightningArgumentParser):
    """Argument parser whose errors are one line (the full usage only with ``--help``)."""

    def error(self, message: str, ex: Exception | None = None):
        if os.environ.get(DEBUG_ENV) or not self.exit_on_error:
            return super().error(message, ex)
        lines = [line.strip() for line in str(message).splitlines() if line.strip()]
        _fail(" ".join(lines[:3]) if lines else "invalid arguments")


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


class QlitCLI(LightningCLI):
    """LightningCLI for hybrid classifiers: ``qlit fit|validate|test|predict|cv --config <yaml>``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", {"callbacks": [PredictionWriter(), NonFiniteGuard(), GracefulStop()]})
        self._checkpoint: dict[str, Any] | None = None
        kwargs.setdefault("trainer_class", QlitTrainer)
        kwargs.setdefault("parser_kwargs", {"description": "Train hybrid quantum-classical classifiers (qlit)."})
        super().__init__(
            HybridClassifier,
            KFoldDataModule,
            *args,
            subclass_mode_data=True,
            save_config_callback=QlitSaveConfig,
            parser_class=QlitArgumentParser,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        links = (("num_features", "in_features"), ("num_classes", "num_classes"), ("class_names", "class_names"))
        for source, target in links:
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands plus ``cv`` (its arguments come from `QlitTrainer.cv`)."""
        return {**LightningCLI.subcommands(), "cv": {"model", "datamodule"}}

    def cv(self, model: Any, datamodule: Any = None) -> None:
        """Run ``qlit cv``: a fresh CLI per fold, built from this command's parsed config."""
        if datamodule is not None:
            datamodule.setup("fit")  # bad data fails here, before the cv run writes anything
        cross_validate(type(self), self.config["cv"], self._parser("cv"))

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is not None:
            self._resolve_checkpoint(subcommand, self.config[subcommand])

    def _resolve_checkpoint(self, subcommand: str, config: Any) -> None:
        """Turn ``--ckpt_path last|best`` into a file and log into the run folder it came from.

        Runs before LightningCLI reads the model's hyperparameters from the checkpoint, so
        ``validate``, ``test`` and ``predict`` rebuild the architecture the checkpoint was trained with.
        """
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        logger = next(iter(tensorboard_loggers(config)), None)
        experiment_dir = Path(logger.save_dir) / logger.name if logger is not None else None
        checkpoint = resolve_checkpoint(str(ckpt_path), experiment_dir)
        if checkpoint is None:
            if subcommand != "fit":
                _fail(f"--ckpt_path last: no last.ckpt under {experiment_dir}")
            print(f"qlit: no last.ckpt under {experiment_dir} yet; starting a new run", file=sys.stderr)
            config.ckpt_path = None
            return
        config.ckpt_path = str(checkpoint)
        self._checkpoint = load_checkpoint(checkpoint)  # weights-only: refuses files that would run code
        version = version_of(checkpoint, experiment_dir) if experiment_dir is not None else None
        if version is not None:
            logger.version = version

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        install_checkpoint_io(trainer)  # atomic checkpoint writes, weights-only reads
        return trainer

    def before_fit(self) -> None:
        preflight(self, "fit")

    def before_validate(self) -> None:
        preflight(self, "validate")

    def before_test(self) -> None:
        preflight(self, "test")

    def before_predict(self) -> None:
        preflight(self, "predict")


def main(args: list[str] | None = None) -> None:
    """Run the ``qlit`` command line; ``args`` defaults to ``sys.argv[1:]``."""
    try:
        QlitCLI(args=args)
    except TrainingInterrupted as stop:
        print(f"qlit: {stop}", file=sys.stderr)
        sys.exit(stop.code)
    except SIGTERMException:
        print("qlit: stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + 15)
    except Exception as err:
        cause = _user_error(err)
        if cause is None or os.environ.get(DEBUG_ENV):
            raise
        _fail(str(cause))
    finally:
        # Lightning leaves the DDP process group up; gloo's threads still running at interpreter
        # exit abort the process ("terminate called without an active exception").
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _user_error(err: BaseException | None) -> QlitError | None:
    """The `QlitError` behind ``err``: jsonargparse wraps errors raised while instantiating classes."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, QlitError):
            return err
        if isinstance(err, MisconfigurationException):  # Lightning's word for a bad trainer setting
            return QlitError(str(err).strip().splitlines()[0])
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
