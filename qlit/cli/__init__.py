"""The ``qlit`` command line: parse, check, dispatch to Lightning or `qlit.evaluation`, and say errors in one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from qlit import callbacks, data  # noqa: F401  (imported so configs can name their classes briefly)
from qlit.callbacks.safety import TrainingInterrupted
from qlit.cli.checks import (
    no_bars_without_a_terminal,
    refuse_multi_process_cv,
    refuse_new_samples_without_a_checkpoint,
    subcommands_to_build,
)
from qlit.cli.errors import user_error
from qlit.commands import OPTIONS, QlitTrainer, options_of
from qlit.data.shared import shared_data
from qlit.engine.build import RunBuilder
from qlit.engine.parser import fail
from qlit.errors import QlitError
from qlit.io.checkpoint_content import check_checkpoint_content
from qlit.io.checkpoints import load_checkpoint
from qlit.io.config_files import check_config_files
from qlit.io.preflight import check_resume_overrides, preflight
from qlit.io.provenance import record_command
from qlit.io.runs import (
    claim_version,
    release_if_empty,
    remove_new_empty_files,
    resolve_checkpoint,
    tensorboard_loggers,
    version_of,
)
from qlit.runtime import apply_threads, debugging, quiet_lightning, restore_loggers

# A version folder claimed by the launching process, inherited by the DDP processes Lightning starts from it.
RUN_VERSION_ENV = "QLIT_RUN_VERSION"
_CLAIMED: list[Path] = []  # version folders this process claimed for a new fit


class QlitCLI(RunBuilder):
    """The ``qlit`` command: ``qlit fit|validate|test|predict|cv|tune|diagnose|robustness --config <yaml>``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._checkpoint: dict[str, Any] | None = None
        kwargs.setdefault("trainer_class", QlitTrainer)
        inherited_version = os.environ.get(RUN_VERSION_ENV)
        self._run_files: tuple[Path, set[Path]] | None = None
        self._full_parsers = subcommands_to_build(kwargs.get("args"), self.subcommands())
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self._remove_empty_new_files()
            raise
        finally:
            if inherited_version is None:  # this process claimed it: the next run in it claims its own
                os.environ.pop(RUN_VERSION_ENV, None)
            while _CLAIMED:
                release_if_empty(_CLAIMED.pop())  # a failed start leaves no empty version folder behind

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # Each subcommand's parser introspects the Trainer, the model and every data module: 93% of a command's
        # start-up after the imports. Only the subcommand being run gets its arguments; the others keep their name
        # and description for `qlit --help`.
        if self._full_parsers is not None and subcommand not in self._full_parsers:
            return self.init_parser(**kwargs)
        return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands plus qlit's own (their arguments come from `QlitTrainer`)."""
        return {**LightningCLI.subcommands(), **{name: {"model", "datamodule"} for name in OPTIONS}}

    def cv(self, model: Any, datamodule: Any = None, **options: Any) -> None:
        """Run ``qlit cv``: each fold built from this command's parsed config (`qlit.evaluation.cv`)."""
        from qlit.evaluation.cv import cross_validate  # not imported by the commands that do not need it

        cross_validate(self.config["cv"], self._dumped(), self._checked("cv", options, datamodule))

    def tune(self, model: Any, datamodule: Any = None, **options: Any) -> None:
        """Run ``qlit tune``: Ray Tune trials, each built from this config plus its sampled values."""
        from qlit.evaluation.tune import run_tune

        run_tune(self.config["tune"], self._dumped(), self._checked("tune", options, datamodule))

    @staticmethod
    def _checked(subcommand: str, options: dict[str, Any], datamodule: Any) -> Any:
        """The command's options, checked, and its data read and split: bad input fails before anything is written."""
        settings = options_of(subcommand, options)
        settings.check()
        if datamodule is not None:
            datamodule.setup("fit")
        return settings

    def diagnose(self, model: Any, datamodule: Any = None, **options: Any) -> None:
        """Run ``qlit diagnose``: `qlit.evaluation.diagnostics` over widths and depths around the model's circuit."""
        from qlit.evaluation.diagnostics import run_diagnose

        run_diagnose(self.config["diagnose"], model.hparams, options_of("diagnose", options))

    def robustness(self, model: Any, datamodule: Any = None, **options: Any) -> None:
        """Run ``qlit robustness``: `qlit.evaluation.robustness` on the resolved checkpoint, printing the table."""
        from qlit.evaluation.robustness import run_robustness
        from qlit.models.hardware import device_circuit

        settings = options_of("robustness", options)
        if not settings.ckpt_path or datamodule is None:
            raise QlitError("qlit robustness needs a checkpoint and its data: --config <file> --ckpt_path best|FILE")
        circuit = device_circuit(model)
        device = None if circuit is None else (model.net.spec.backend, circuit.runner.options)
        report = run_robustness(Path(settings.ckpt_path), datamodule, settings, device=device)
        print(Path(report["files"]["md"]).read_text(), end="")
        print(f"qlit robustness: wrote {Path(report['files']['md']).parent}", file=sys.stderr)

    def export(self, model: Any, datamodule: Any = None, **options: Any) -> None:
        """Run ``qlit export``: the resolved checkpoint as an ONNX model (`qlit.export.onnx`)."""
        from qlit.export.onnx import export_checkpoint

        settings = options_of("export", options)
        ckpt = self._required_checkpoint("export", settings.ckpt_path)
        for path in export_checkpoint(ckpt, settings.output, settings.int8, _feature_names(datamodule)):
            print(f"qlit export: wrote {path} ({path.stat().st_size} bytes)", file=sys.stderr)

    def serve(self, model: Any, datamodule: Any = None, **options: Any) -> None:
        """Run ``qlit serve``: the resolved checkpoint's ONNX model over HTTP (`qlit.export.server`)."""
        from qlit.export.onnx import onnx_from_checkpoint, session
        from qlit.export.server import serve

        settings = options_of("serve", options)
        settings.check()
        ckpt = self._required_checkpoint("serve", settings.ckpt_path)
        proto = onnx_from_checkpoint(self._checkpoint or load_checkpoint(ckpt), ckpt, _feature_names(datamodule))
        serve(session(proto), settings.host, settings.port, settings.max_rows, settings.max_body_bytes)

    @staticmethod
    def _required_checkpoint(subcommand: str, ckpt_path: str | None) -> Path:
        if not ckpt_path:
            raise QlitError(f"qlit {subcommand} needs a checkpoint: --config <file> --ckpt_path best|last|FILE")
        return Path(ckpt_path)

    def _dumped(self) -> str:
        """The command's whole parsed config as YAML, as the cv and tune reports keep it."""
        return self.parser.dump(self.config, skip_none=False, format="yaml")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        apply_threads()  # one thread unless the user chose (qlit.runtime): serial and Ray runs agree
        no_bars_without_a_terminal(config)
        if subcommand in ("cv", "tune"):
            refuse_multi_process_cv(config, subcommand)
        self._resolve_checkpoint(subcommand, config)
        refuse_new_samples_without_a_checkpoint(subcommand, config)
        if subcommand == "fit" and self._checkpoint is not None:
            check_resume_overrides(self._checkpoint, Path(config.ckpt_path), config.model)
        if subcommand == "fit" and not config.get("ckpt_path"):
            self._claim_run_folder(config)

    def _resolve_checkpoint(self, subcommand: str, config: Any) -> None:
        """Turn ``--ckpt_path last|best`` into a file and log into the run folder it came from.

        Runs before LightningCLI reads the model's hyperparameters from the checkpoint, so
        ``validate``, ``test`` and ``predict`` rebuild the architecture the checkpoint was trained with.
        """
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        logger = next(iter(tensorboard_loggers(config)), None)
        experiment_dir = Path(logger.save_dir) / (logger.get("name") or "") if logger is not None else None
        version = logger.get("version") if logger is not None else None
        version = version if version is None or isinstance(version, str) else f"version_{version}"
        checkpoint = resolve_checkpoint(str(ckpt_path), experiment_dir, version)
        if checkpoint is None:
            if subcommand != "fit":
                fail(f"--ckpt_path last: no last.ckpt of a 'qlit fit' run under {experiment_dir}")
            print(f"qlit: no last.ckpt under {experiment_dir} yet; starting a new run", file=sys.stderr)
            config.ckpt_path = None
            return
        config.ckpt_path = str(checkpoint)
        self._checkpoint = load_checkpoint(checkpoint)  # weights-only: refuses files that would run code
        check_checkpoint_content(self._checkpoint, checkpoint, resume=subcommand == "fit")
        found = version_of(checkpoint, experiment_dir) if experiment_dir is not None else None
        if found is not None:
            logger.version = found

    def _claim_run_folder(self, config: Any) -> None:
        """Give a new fit its own version folder, claimed atomically before Lightning picks one.

        TensorBoardLogger picks ``max(version) + 1`` by listing the folder, so two fits started
        together would share a version. The launching process claims it with an exclusive ``mkdir``;
        DDP processes that Lightning starts from it inherit the name. Under ``torchrun`` every process
        starts on its own, so Lightning's choice (made on every rank alike) is kept.
        """
        loggers = tensorboard_loggers(config)
        if not loggers or loggers[0].get("version") is not None:
            return
        logger = loggers[0]
        inherited = os.environ.get(RUN_VERSION_ENV)
        if inherited:
            logger.version = inherited
            return
        if any(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
            return
        claimed = claim_version(Path(logger.save_dir) / (logger.get("name") or ""))
        _CLAIMED.append(claimed)
        logger.version = claimed.name
        os.environ[RUN_VERSION_ENV] = claimed.name

    def before_fit(self) -> None:
        preflight(self, "fit")
        self._note_run_files()

    def before_validate(self) -> None:
        preflight(self, "validate")
        self._note_run_files()

    def before_test(self) -> None:
        preflight(self, "test")
        self._note_run_files()

    def before_predict(self) -> None:
        preflight(self, "predict")
        self._note_run_files()

    def _note_run_files(self) -> None:
        """Remember the run folder's files, so a command that fails can take back what it left empty."""
        log_dir = self.trainer.log_dir  # a broadcast once DDP is up: every rank asks, rank 0 keeps the answer
        if log_dir and self.trainer.is_global_zero:
            folder = Path(log_dir)
            self._run_files = (folder, set(folder.rglob("*")) if folder.is_dir() else set())

    def _remove_empty_new_files(self) -> None:
        if self._run_files is not None:
            remove_new_empty_files(*self._run_files)


def _feature_names(datamodule: Any) -> list[str] | None:
    """The raw feature names a data module knows, for an export whose checkpoint holds none."""
    names = getattr(datamodule, "feature_names", None) or getattr(datamodule, "feature_columns", None)
    return list(names) if isinstance(names, (list, tuple)) else None


def main(args: list[str] | None = None) -> None:
    """Run the ``qlit`` command line; ``args`` defaults to ``sys.argv[1:]``."""
    levels = quiet_lightning()
    record_command(args)
    try:
        check_config_files(sys.argv[1:] if args is None else args)
        with shared_data():  # the command and every fold it trains read each data file once
            QlitCLI(args=args)
    except TrainingInterrupted as stop:
        print(f"qlit: {stop}", file=sys.stderr)
        sys.exit(stop.code)
    except SIGTERMException:
        print("qlit: stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + 15)
    except KeyboardInterrupt:
        print("qlit: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        cause = user_error(err)
        if cause is None or debugging():
            raise
        fail(str(cause))
    finally:
        restore_loggers(levels)
        # Lightning leaves the DDP process group up; gloo's threads still running at interpreter
        # exit abort the process ("terminate called without an active exception").
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
