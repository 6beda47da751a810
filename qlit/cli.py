"""The ``qlit`` command line: LightningCLI with qlit's models, data and run-folder conventions."""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import sys
import threading
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

from qlit import callbacks, data  # noqa: F401  (imported so configs can name their classes briefly)
from qlit.callbacks import PredictionWriter, RunSummary
from qlit.callbacks.safety import GracefulStop, NonFiniteGuard, TrainingInterrupted
from qlit.data import KFoldDataModule
from qlit.errors import QlitError
from qlit.evaluation.cv import CVOptions, cross_validate
from qlit.evaluation.diagnostics import run_diagnose
from qlit.evaluation.robustness import DEFAULT_LEVELS, DEFAULT_SHOTS, run_robustness
from qlit.evaluation.tune import TuneOptions, run_tune
from qlit.io.checkpoints import SafeCheckpointIO, check_checkpoint_content, load_checkpoint
from qlit.io.config_files import check_config_files
from qlit.io.preflight import check_resume_overrides, preflight
from qlit.io.runs import (
    claim_version,
    release_if_empty,
    resolve_checkpoint,
    tensorboard_loggers,
    unused_path,
    version_of,
)
from qlit.models import HybridClassifier

DEBUG_ENV = "QLIT_DEBUG"
THREADS_ENV = "QLIT_NUM_THREADS"
DDP_TIMEOUT_ENV = "QLIT_DDP_TIMEOUT"
# A version folder claimed by the launching process, inherited by the DDP processes Lightning starts from it.
RUN_VERSION_ENV = "QLIT_RUN_VERSION"
# The circuits up to this width are small enough that torch's intra-op threads cost more than they give.
SINGLE_THREAD_MAX_QUBITS = 8
# A CPU DDP peer that stops answering fails the job after this long (torch's default is 30 minutes).
DDP_CPU_TIMEOUT_S = 300
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")
_PEER_LOST = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer")  # gloo's words
_CLAIMED: list[Path] = []  # version folders this process claimed for a new fit


def _fail(message: str) -> None:
    print(f"qlit: error: {message}", file=sys.stderr)
    sys.exit(2)


def _short_doc(method: Any, doc: str) -> Any:
    """Lightning's Trainer method under a one-line description for ``qlit --help``; signature kept."""

    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs)

    wrapper.__doc__ = doc
    return wrapper


class QlitTrainer(L.Trainer):
    """Lightning's Trainer with qlit's subcommands and their one-line descriptions."""

    fit = _short_doc(L.Trainer.fit, "Train a model (resume with --ckpt_path last).")
    validate = _short_doc(L.Trainer.validate, "Score a checkpoint on its validation split.")
    test = _short_doc(L.Trainer.test, "Score a checkpoint on its held-out test fold.")
    predict = _short_doc(L.Trainer.predict, "Predict the test fold or a new file (--data.predict_file).")

    def cv(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        workers: int = 1,
        address: str | None = None,
        gpus_per_fold: float = 0.0,
    ) -> None:
        """Cross-validate: every fold, beside a classical twin, logistic regression and the majority class.

        Each fold k trains a fresh model, data module and trainer, logs to <experiment>/fold_<k> and is
        tested on its held-out fold with its best checkpoint. Writes cv_summary.json, cv_summary.md
        (means, sd, 95% CI) and figures to the experiment's log folder.

        Args:
            model: The configured model.
            datamodule: The configured k-fold data module.
            workers: Folds trained at once, each a Ray task with one CPU and one torch thread; 1 trains them
                here, one after another. The results are the same either way.
            address: A Ray cluster to train the folds on: ``auto`` (the one started on this machine with
                ``ray start``) or the head node's ``host:port``; ``RAY_ADDRESS`` is used when unset.
            gpus_per_fold: The GPU share each fold asks Ray for (0.5 puts two folds on one GPU).
        """
        raise QlitError("cross-validation runs from the command line: qlit cv --config <file>")

    def tune(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        space: str | None = None,
        num_samples: int = 16,
        nested: bool = True,
        inner_folds: int = 3,
        search: Literal["random", "optuna"] = "random",
        asha: bool = True,
        grace_period: int = 2,
        workers: int = 1,
        address: str | None = None,
        gpus_per_trial: float = 0.0,
        resume: bool = False,
    ) -> None:
        """Tune config keys with Ray Tune, scored on validation rows only; nested cv estimates the result.

        Each trial trains on the inner folds of an outer fold's training rows; the best config by mean
        validation loss is trained on the outer fold and tested on its test rows, beside the untuned config,
        logistic regression and the majority class. Writes tune_summary.json/.md, tune_scores.png and
        best_config.yaml to <experiment>/tune_<n>/.

        Args:
            model: The configured model.
            datamodule: The configured k-fold data module.
            space: YAML file mapping config keys (model.lr, data.batch_size, ...) to distributions
                (loguniform, uniform, randint, choice, grid, ...).
            num_samples: Trials per search (times each grid value).
            nested: Search inside every outer fold (the honest estimate); false: only in data.fold.
            inner_folds: Inner folds of the outer fold's non-test rows each trial trains and validates on.
            search: random, or optuna (TPE, through Ray Tune's search interface; needs optuna).
            asha: Stop poor trials early (ASHA on val_loss, reported every validation epoch).
            grace_period: Validation epochs every trial runs before ASHA may stop it.
            workers: Trials at once on this machine, each with one CPU (a local Ray).
            address: A Ray cluster to run on: auto, or the head's host:port; RAY_ADDRESS is used when unset.
            gpus_per_trial: The GPU share each trial asks Ray for.
            resume: Go on with the last unfinished tune_<n> of this experiment (Ray Tune's restore).
        """
        raise QlitError("tuning runs from the command line: qlit tune --config <file> --space <file>")

    def diagnose(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        qubits: list[int] | None = None,
        layers: list[int] | None = None,
        samples: int = 200,
    ) -> None:
        """Barren-plateau check: gradient variance over random initialisations, by width and depth.

        Args:
            model: The configured model; its circuit (n_qubits, n_layers, ansatz, embedding) is the reference.
            datamodule: Not used: the diagnostic needs no data.
            qubits: Widths to compare; default 2, 4, ... up to twice the model's n_qubits (at most 12).
            layers: Depths to compare; default 1, the model's n_layers and 4 times it.
            samples: Random initialisations per circuit.
        """
        raise QlitError("the diagnostic runs from the command line: qlit diagnose --config <file>")

    def robustness(
        self,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        channel: str = "depolarizing",
        noise_levels: list[float] = list(DEFAULT_LEVELS),
        shots: list[int | None] = list(DEFAULT_SHOTS),
        repeats: int = 3,
        seed: int = 0,
        twin_ckpt: str | None = None,
    ) -> None:
        """Score one checkpoint on its test fold over a grid of noise levels and shot counts (table + plot).

        Args:
            model: The configured model (rebuilt from the checkpoint's hyperparameters).
            datamodule: The data whose test fold the checkpoint was trained beside.
            ckpt_path: The checkpoint: ``best``, ``last`` or a file.
            channel: Gate channel after every gate: depolarizing, amplitude_damping, phase_damping, bit_flip
                or phase_flip.
            noise_levels: The channel's probabilities to score at (0: none).
            shots: Shot counts to score at; null for exact expectation values.
            repeats: Scores per cell with shots, from seeds seed, seed + 1, ... (mean and sd reported).
            seed: First seed of every cell.
            twin_ckpt: Checkpoint of the classical twin (--model.core classical, same fold) for its reference line.
        """
        raise QlitError("robustness runs from the command line: qlit robustness --config <file> --ckpt_path best")


class QlitArgumentParser(LightningArgumentParser):
    """Argument parser whose errors are one line (the full usage only with ``--help``)."""

    def error(self, message: str, ex: Exception | None = None):
        if os.environ.get(DEBUG_ENV) or not self.exit_on_error:
            return super().error(message, ex)
        _fail(_one_line(str(message)))


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
        kwargs.setdefault(
            "trainer_defaults",
            {"callbacks": [PredictionWriter(), NonFiniteGuard(), GracefulStop(), RunSummary()]},
        )
        self._checkpoint: dict[str, Any] | None = None
        kwargs.setdefault("trainer_class", QlitTrainer)
        kwargs.setdefault("parser_kwargs", {"description": "Train hybrid quantum-classical classifiers (qlit)."})
        # The model builds its own Adam and ReduceLROnPlateau (model.lr, model.lr_factor, ...).
        kwargs.setdefault("auto_configure_optimizers", False)
        inherited_version = os.environ.get(RUN_VERSION_ENV)
        self._run_files: tuple[Path, set[Path]] | None = None
        try:
            super().__init__(
                HybridClassifier,
                KFoldDataModule,
                *args,
                subclass_mode_data=True,
                save_config_callback=QlitSaveConfig,
                parser_class=QlitArgumentParser,
                **kwargs,
            )
        except BaseException:
            self._remove_empty_new_files()
            raise
        finally:
            if inherited_version is None:  # this process claimed it: the next run in it claims its own
                os.environ.pop(RUN_VERSION_ENV, None)
            while _CLAIMED:
                release_if_empty(_CLAIMED.pop())  # a failed start leaves no empty version folder behind

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        links = (("num_features", "in_features"), ("num_classes", "num_classes"), ("class_names", "class_names"))
        for source, target in links:
            parser.link_arguments(f"data.{source}", f"model.{target}", apply_on="instantiate")

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's subcommands plus qlit's own (their arguments come from `QlitTrainer`)."""
        own = ("cv", "tune", "diagnose", "robustness")
        return {**LightningCLI.subcommands(), **{name: {"model", "datamodule"} for name in own}}

    def cv(
        self, model: Any, datamodule: Any = None, workers: int = 1, address: str | None = None,
        gpus_per_fold: float = 0.0,
    ) -> None:
        """Run ``qlit cv``: a fresh CLI per fold, built from this command's parsed config."""
        options = CVOptions(workers, address, gpus_per_fold)
        options.check()
        if datamodule is not None:
            datamodule.setup("fit")  # bad data fails here, before the cv run writes anything
        full = self.parser.dump(self.config, skip_none=False, format="yaml")
        cross_validate(type(self), self.config["cv"], full, options)

    def tune(self, model: Any, datamodule: Any = None, space: str | None = None, **options: Any) -> None:
        """Run ``qlit tune``: Ray Tune trials, each a fresh CLI built from this config plus its sampled values."""
        if space is None:
            raise QlitError("qlit tune needs a search space: --space <file> (see configs/space/)")
        tune_options = TuneOptions(space=space, **options)
        tune_options.check()
        if datamodule is not None:
            datamodule.setup("fit")  # bad data fails here, before the tune run writes anything
        full = self.parser.dump(self.config, skip_none=False, format="yaml")
        run_tune(type(self), self.config["tune"], full, tune_options)

    def diagnose(
        self, model: Any, datamodule: Any = None, qubits: list[int] | None = None,
        layers: list[int] | None = None, samples: int = 200,
    ) -> None:
        """Run ``qlit diagnose``: `qlit.evaluation.diagnostics` over widths and depths around the model's circuit."""
        run_diagnose(self.config["diagnose"], model.hparams, qubits, layers, samples)

    def robustness(
        self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, channel: str = "depolarizing",
        noise_levels: list[float] = list(DEFAULT_LEVELS), shots: list[int | None] = list(DEFAULT_SHOTS),
        repeats: int = 3, seed: int = 0, twin_ckpt: str | None = None,
    ) -> None:
        """Run ``qlit robustness``: `qlit.evaluation.robustness` on the resolved checkpoint, printing the table."""
        if not ckpt_path or datamodule is None:
            raise QlitError("qlit robustness needs a checkpoint and its data: --config <file> --ckpt_path best|FILE")
        report = run_robustness(Path(ckpt_path), datamodule, channel, noise_levels, shots, repeats, seed, twin_ckpt)
        print(Path(report["files"]["md"]).read_text(), end="")
        print(f"qlit robustness: wrote {Path(report['files']['md']).parent}", file=sys.stderr)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        _choose_threads(config)
        if subcommand in ("cv", "tune"):
            _refuse_multi_process_cv(config, subcommand)
        self._resolve_checkpoint(subcommand, config)
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
                _fail(f"--ckpt_path last: no last.ckpt of a 'qlit fit' run under {experiment_dir}")
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

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        subcommand = self.config.get("subcommand")
        trainer_config = self.config_init[subcommand]["trainer"] if subcommand else None
        if trainer_config is not None and _is_cpu_ddp(trainer_config):
            timeout = float(os.environ.get(DDP_TIMEOUT_ENV, DDP_CPU_TIMEOUT_S))
            trainer_config["strategy"] = DDPStrategy(timeout=timedelta(seconds=timeout))
        if trainer_config is not None and not trainer_config.get("plugins"):
            kwargs.setdefault("plugins", [SafeCheckpointIO()])  # atomic checkpoint writes, weights-only reads
        return super().instantiate_trainer(**kwargs)

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
        log_dir = self.trainer.log_dir if self.trainer.is_global_zero else None
        if log_dir:
            folder = Path(log_dir)
            self._run_files = (folder, set(folder.rglob("*")) if folder.is_dir() else set())

    def _remove_empty_new_files(self) -> None:
        """After a failure (a full disk, say): remove the empty files and folders this command created.

        A config, events file or prediction file that could not be written is left at 0 bytes;
        checkpoints are written atomically and are never half there. Earlier files are never touched.
        """
        if self._run_files is None:
            return
        folder, before = self._run_files
        if not folder.is_dir():
            return
        for path in sorted(set(folder.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
            try:
                if path.is_file() and path.stat().st_size == 0:
                    path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            except OSError:
                pass


def _is_cpu_ddp(trainer_config: dict[str, Any]) -> bool:
    strategy = trainer_config.get("strategy")
    accelerator = str(trainer_config.get("accelerator") or "auto")
    cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return cpu and isinstance(strategy, str) and strategy in ("ddp", "ddp_find_unused_parameters_true")


def _choose_threads(config: Any) -> None:
    """One torch thread for small circuits, unless the user chose (``QLIT_NUM_THREADS``, ``OMP_NUM_THREADS``).

    A training step of these networks is a few dozen tiny tensor operations: two intra-op threads
    only wait on each other, and on a busy 2-core machine a step took 700 ms instead of 21-38 ms.
    """
    chosen = os.environ.get(THREADS_ENV)
    if chosen:
        try:
            threads = int(chosen)
        except ValueError:
            raise QlitError(f"{THREADS_ENV} must be a positive integer, got {chosen!r}") from None
        if threads < 1:
            raise QlitError(f"{THREADS_ENV} must be a positive integer, got {chosen!r}")
        torch.set_num_threads(threads)
        return
    if os.environ.get("OMP_NUM_THREADS"):
        return
    n_qubits = config.model.get("n_qubits") if config.get("model") is not None else None
    if isinstance(n_qubits, int) and n_qubits <= SINGLE_THREAD_MAX_QUBITS:
        torch.set_num_threads(1)


def _refuse_multi_process_cv(config: Any, subcommand: str = "cv") -> None:
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


def quiet_lightning() -> None:
    """Keep Lightning's INFO lines and two known, harmless warnings out of qlit's output (not with QLIT_DEBUG).

    Called by `main` and by every Ray worker that trains for qlit.
    """
    # Lightning 2.6's own pytree helper trips torch 2.13's LeafSpec deprecation once per trainer.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Said on every resume; a new fit into a folder with checkpoints is refused before it starts (preflight).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    if not os.environ.get(DEBUG_ENV):
        # Lightning's INFO lines (seed, GPU/TPU availability, tips) would stand before qlit's own messages.
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def main(args: list[str] | None = None) -> None:
    """Run the ``qlit`` command line; ``args`` defaults to ``sys.argv[1:]``."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    # TensorBoard's writer thread dies on a full disk with a traceback of its own; the main thread meets the
    # same error at the next flush and reports it in one line.
    threading.excepthook = _quiet_about_full_disk
    quiet_lightning()
    try:
        check_config_files(sys.argv[1:] if args is None else args)
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
        cause = _user_error(err)
        if cause is None or os.environ.get(DEBUG_ENV):
            raise
        _fail(str(cause))
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        # Lightning leaves the DDP process group up; gloo's threads still running at interpreter
        # exit abort the process ("terminate called without an active exception").
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _quiet_about_full_disk(args: threading.ExceptHookArgs) -> None:
    if not (isinstance(args.exc_value, OSError) and args.exc_value.errno == errno.ENOSPC):
        threading.__excepthook__(args)


def _user_error(err: BaseException | None) -> QlitError | None:
    """The `QlitError` behind ``err``: jsonargparse wraps errors raised while instantiating classes."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, QlitError):
            return err
        if isinstance(err, MisconfigurationException):  # Lightning's word for a bad trainer setting
            return QlitError(str(err).strip().splitlines()[0])
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            where = f" writing {err.filename}" if err.filename else ""
            return QlitError(
                f"no space left on the device{where}: the command stopped; checkpoints already on disk are "
                "complete (resume with --ckpt_path last once there is room)"
            )
        if isinstance(err, OSError) and err.filename is not None and err.strerror:
            return QlitError(f"{err.filename}: {err.strerror}")
        if isinstance(err, RuntimeError) and any(sign in str(err) for sign in _PEER_LOST):
            return QlitError(
                "a DDP process stopped answering (it died, or was starved for longer than "
                f"{DDP_TIMEOUT_ENV}={os.environ.get(DDP_TIMEOUT_ENV, DDP_CPU_TIMEOUT_S)} s); the job was stopped: "
                f"{str(err).splitlines()[0][:200]}"
            )
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
