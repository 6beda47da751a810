"""The ``qlit`` command line: LightningCLI with qlit's models, data and run-folder conventions."""

from __future__ import annotations

import difflib
import errno
import functools
import importlib
import inspect
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
from qlit.data.tables import BUILTIN
from qlit.errors import QlitError
from qlit.evaluation.robustness import DEFAULT_LEVELS, DEFAULT_SHOTS, run_robustness
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
from qlit.runtime import apply_threads

DEBUG_ENV = "QLIT_DEBUG"
DDP_TIMEOUT_ENV = "QLIT_DDP_TIMEOUT"
# A version folder claimed by the launching process, inherited by the DDP processes Lightning starts from it.
RUN_VERSION_ENV = "QLIT_RUN_VERSION"
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


_CKPT_DOC = """

        Args:
            ckpt_path: {what}: ``best`` (the lowest val_loss of this experiment's newest fit run), ``last`` (its
                newest epoch) or a checkpoint file. The run folder it came from is where the results go.
            weights_only: Leave unset: qlit always reads checkpoints weights-only, as data that cannot run code.
        """


class QlitTrainer(L.Trainer):
    """Lightning's Trainer with qlit's subcommands and their one-line descriptions."""

    fit = _short_doc(
        L.Trainer.fit,
        "Train a model (resume with --ckpt_path last)." + _CKPT_DOC.format(what="Resume this run"),
    )
    validate = _short_doc(
        L.Trainer.validate,
        "Score a checkpoint on its validation split." + _CKPT_DOC.format(what="The checkpoint to score"),
    )
    test = _short_doc(
        L.Trainer.test,
        "Score a checkpoint on its held-out test fold." + _CKPT_DOC.format(what="The checkpoint to score"),
    )
    predict = _short_doc(
        L.Trainer.predict,
        "Predict the test fold or a new file (--data.predict_file)."
        + _CKPT_DOC.format(what="The checkpoint to predict with"),
    )

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
        split: Literal["val", "test"] = "val",
    ) -> None:
        """Score one checkpoint over a grid of noise levels and shot counts on its validation rows (table, plot).

        Args:
            model: The configured model (rebuilt from the checkpoint's hyperparameters).
            datamodule: The data whose fold the checkpoint was trained on.
            ckpt_path: The checkpoint: ``best``, ``last`` or a file.
            channel: Gate channel after every gate: depolarizing, amplitude_damping, phase_damping, bit_flip
                or phase_flip.
            noise_levels: The channel's probabilities to score at (0: none).
            shots: Shot counts to score at; null for exact expectation values.
            repeats: Scores per cell with shots, from seeds seed, seed + 1, ... (mean and sd reported).
            seed: First seed of every cell.
            twin_ckpt: Checkpoint of the classical twin (--model.core classical, same fold) for its reference line.
            split: The rows scored: val (default), the validation rows, to choose on; test, the fold's test rows,
                only for the final report of a choice already made (every report written names it).
        """
        raise QlitError("robustness runs from the command line: qlit robustness --config <file> --ckpt_path best")


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
        if os.environ.get(DEBUG_ENV) or not self.exit_on_error:
            return super().error(message, ex)
        line = _unknown_option(str(message), self) or _one_line(str(message))
        _fail(line)


def _option_strings(parser: Any) -> list[str]:
    """Every ``--option`` a parser and its subcommands' parsers accept."""
    found: list[str] = []
    for action in getattr(parser, "_actions", []):
        found.extend(s for s in action.option_strings if s.startswith("--"))
        for sub in (getattr(action, "choices", None) or {}).values() if hasattr(action, "_name_parser_map") else ():
            found.extend(_option_strings(sub))
    return found


def _init_options(class_path: str) -> list[str]:
    """The constructor arguments of ``class_path`` and of the classes it extends (its YAML ``init_args``)."""
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
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
        suggestion = suggestion.replace("'--", "'").replace("?'", "'") if not key.startswith("--") else suggestion
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
        self._full_parsers = _subcommands_to_build(kwargs.get("args"), self.subcommands())
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

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # Each subcommand's parser introspects the Trainer, the model and every data module: 93% of a command's
        # start-up after the imports. Only the subcommand being run gets its arguments; the others keep their name
        # and description for `qlit --help`.
        if self._full_parsers is not None and subcommand not in self._full_parsers:
            return self.init_parser(**kwargs)
        return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)

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
        from qlit.evaluation.cv import CVOptions, cross_validate  # not imported by the commands that do not need it

        options = CVOptions(workers, address, gpus_per_fold)
        options.check()
        if datamodule is not None:
            datamodule.setup("fit")  # bad data fails here, before the cv run writes anything
        full = self.parser.dump(self.config, skip_none=False, format="yaml")
        cross_validate(type(self), self.config["cv"], full, options)

    def tune(self, model: Any, datamodule: Any = None, space: str | None = None, **options: Any) -> None:
        """Run ``qlit tune``: Ray Tune trials, each a fresh CLI built from this config plus its sampled values."""
        from qlit.evaluation.tune import TuneOptions, run_tune

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
        from qlit.evaluation.diagnostics import run_diagnose

        run_diagnose(self.config["diagnose"], model.hparams, qubits, layers, samples)

    def robustness(
        self, model: Any, datamodule: Any = None, ckpt_path: str | None = None, channel: str = "depolarizing",
        noise_levels: list[float] = list(DEFAULT_LEVELS), shots: list[int | None] = list(DEFAULT_SHOTS),
        repeats: int = 3, seed: int = 0, twin_ckpt: str | None = None, split: str = "val",
    ) -> None:
        """Run ``qlit robustness``: `qlit.evaluation.robustness` on the resolved checkpoint, printing the table.

        ``split`` is ``val`` (the validation rows) unless ``--split test`` asks for the test fold.
        """
        if not ckpt_path or datamodule is None:
            raise QlitError("qlit robustness needs a checkpoint and its data: --config <file> --ckpt_path best|FILE")
        report = run_robustness(
            Path(ckpt_path), datamodule, channel, noise_levels, shots, repeats, seed, twin_ckpt, split=split
        )
        print(Path(report["files"]["md"]).read_text(), end="")
        print(f"qlit robustness: wrote {Path(report['files']['md']).parent}", file=sys.stderr)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        with warnings.catch_warnings():
            # `main(args)` and `QlitCLI(args=...)` are qlit's in-process entry points (tests, cv folds, tuning
            # trials): that they ignore sys.argv is the point, not a mistake to warn about.
            warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within")
            super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        _choose_threads(config)
        _no_bars_without_a_terminal(config)
        if subcommand in ("cv", "tune"):
            _refuse_multi_process_cv(config, subcommand)
        self._resolve_checkpoint(subcommand, config)
        _refuse_new_samples_without_a_checkpoint(subcommand, config)
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
        log_dir = self.trainer.log_dir  # a broadcast once DDP is up: every rank asks, rank 0 keeps the answer
        if log_dir and self.trainer.is_global_zero:
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


def _subcommands_to_build(args: Any, names: Any) -> set[str] | None:
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


def _is_cpu_ddp(trainer_config: dict[str, Any]) -> bool:
    strategy = trainer_config.get("strategy")
    accelerator = str(trainer_config.get("accelerator") or "auto")
    cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    return cpu and isinstance(strategy, str) and strategy in ("ddp", "ddp_find_unused_parameters_true")


def _choose_threads(config: Any) -> None:
    """Set torch's threads by `qlit.runtime.choose_threads`, the policy a Ray worker of cv or tune follows too.

    One thread whatever the circuit's width, unless the user chose (``QLIT_NUM_THREADS``, ``OMP_NUM_THREADS``):
    a job then gives the same numbers serially and on Ray.
    """
    apply_threads()


def _no_bars_without_a_terminal(config: Any) -> None:
    """Progress bars only on a terminal, unless the user asked (``--trainer.enable_progress_bar``).

    Sent to a file, a bar rewrites itself with carriage returns: hundreds of kilobytes for one fit, with
    qlit's own lines hidden after a ``\\r``.
    """
    trainer = config.get("trainer")
    if trainer is None or trainer.get("enable_progress_bar") is not None:
        return
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        trainer.enable_progress_bar = False


def _refuse_new_samples_without_a_checkpoint(subcommand: str, config: Any) -> None:
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
    # qlit logs epoch metrics that torchmetrics already reduced over processes, in a hook every rank runs; a
    # sync_dist on them would be a second, lazy collective that a rank-0-only callback (the progress bar) could reach.
    warnings.filterwarnings(
        "ignore", message=r"It is recommended to use `self.log\('((train|val|test)_(loss|acc)|quantum_grad_\w+)'"
    )
    # qlit logs once per epoch, so the logging interval of steps does not apply to it.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
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
