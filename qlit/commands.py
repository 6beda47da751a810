"""qlit's subcommands beside Lightning's, and each one's options, declared once.

Every option of ``qlit cv``, ``tune``, ``diagnose`` and ``robustness`` is a field of one dataclass here. The field
is what the command's code receives (``CVOptions``, ...), and the `QlitTrainer` method that LightningCLI reads the
command line's options from is made from the same fields (`_subcommand`): names, types, defaults and help text
are written once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import lightning as L

from qlit.engine.runner import needs_ray, ray_module
from qlit.errors import QlitError


@dataclass(frozen=True)
class CVOptions:
    """Cross-validate: every fold, beside a classical twin, logistic regression, a tuned SVM and gradient boosting.

    Each fold k trains a fresh model, data module and trainer, logs to <experiment>/fold_<k> and is tested on its
    held-out fold with its best checkpoint. Writes cv_summary.json, cv_summary.md (means, sd, 95% CI) and figures
    to the experiment's log folder.

    Attributes:
        workers: Folds trained at once, each in a process forked from this command once its imports are done (on
            Linux; elsewhere, and with ``--gpus_per_fold``, a Ray task with one CPU); 1 trains them here, one after
            another. The results are the same either way.
        address: A Ray cluster to train the folds on: ``auto`` (the one started on this machine with ``ray start``)
            or the head node's ``host:port``; ``local`` starts a Ray of the command's own with ``--workers``
            CPUs. ``RAY_ADDRESS`` is used when unset.
        gpus_per_fold: The GPU share each fold asks Ray for (0.5 puts two folds on one GPU).
        repeats: Repeat the k folds over this many split seeds (split_seed, split_seed + 1, ...), each with its
            own model seed (seed_everything + repeat); means and intervals are over all repeats × folds fits.
        tuned_baselines: Also fit an RBF SVM and gradient boosting on each fold, their hyperparameters chosen by
            inner cv on the fold's training rows (a few seconds a fold); false leaves them out.
        cost_bps: Equity data: what the strategy table charges per trade, in basis points of the position changed
            (other data ignore it).
        folds: Run only these folds, e.g. ``0,2``; the summary says which it covers. Default: all.
        resume: Continue the experiment's newest unfinished cv run (one that was killed): trainings whose results
            are complete are kept, the others run again; the settings must be the ones it started with.
    """

    workers: int = 1
    address: str | None = None
    gpus_per_fold: float = 0.0
    repeats: int = 1
    tuned_baselines: bool = True
    cost_bps: float = 5.0
    folds: list[int] | str | None = None
    resume: bool = False

    def check(self) -> None:
        """Refuse impossible settings, and Ray options when Ray is not installed, before anything is written."""
        if self.workers < 1:
            raise QlitError(f"--workers must be at least 1, got {self.workers}")
        if self.repeats < 1:
            raise QlitError(f"--repeats must be at least 1, got {self.repeats}")
        if not self.cost_bps >= 0:
            raise QlitError(f"--cost_bps must be 0 or more, got {self.cost_bps}")
        if not 0 <= self.gpus_per_fold:
            raise QlitError(f"--gpus_per_fold must be 0 or more, got {self.gpus_per_fold}")
        if needs_ray(self.workers, self.address, self.gpus_per_fold):
            ray_module("--address" if self.address else "--gpus_per_fold" if self.gpus_per_fold else "--workers")


@dataclass(frozen=True)
class TuneOptions:
    """Tune config keys with Ray Tune, scored on validation rows only; nested cv estimates the result.

    Each trial trains on the inner folds of an outer fold's training rows; the best config by mean validation loss
    is trained on the outer fold and tested on its test rows, beside the untuned config, logistic regression and
    the majority class. Writes tune_summary.json/.md, tune_scores.png and best_config.yaml to
    <experiment>/tune_<n>/.

    Attributes:
        space: YAML file mapping config keys (model.lr, data.batch_size, ...) to distributions (loguniform,
            uniform, randint, choice, grid, ...).
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

    space: str | None = None
    num_samples: int = 16
    nested: bool = True
    inner_folds: int = 3
    search: Literal["random", "optuna"] = "random"
    asha: bool = True
    grace_period: int = 2
    workers: int = 1
    address: str | None = None
    gpus_per_trial: float = 0.0
    resume: bool = False

    def check(self) -> None:
        """Refuse impossible settings, and a search Ray or optuna cannot run here, before anything is written."""
        if self.space is None:
            raise QlitError("qlit tune needs a search space: --space <file> (see configs/space/)")
        if self.num_samples < 1:
            raise QlitError(f"--num_samples must be at least 1, got {self.num_samples}")
        if self.inner_folds < 2:
            raise QlitError(f"--inner_folds must be at least 2, got {self.inner_folds}")
        if self.workers < 1:
            raise QlitError(f"--workers must be at least 1, got {self.workers}")
        if self.grace_period < 1:
            raise QlitError(f"--grace_period must be at least 1, got {self.grace_period}")
        if self.gpus_per_trial < 0:
            raise QlitError(f"--gpus_per_trial must be 0 or more, got {self.gpus_per_trial}")
        ray_module("qlit tune")
        if self.search == "optuna":
            try:
                import optuna  # noqa: F401
            except ImportError:
                raise QlitError("--search optuna needs optuna: pip install optuna (or the ray extra)") from None


@dataclass(frozen=True)
class DiagnoseOptions:
    """Barren-plateau check: gradient variance over random initialisations, by width and depth.

    The model's circuit (n_qubits, n_layers, ansatz, embedding) is the reference; no data is read.

    Attributes:
        qubits: Widths to compare; default 2, 4, ... up to twice the model's n_qubits (at most 12).
        layers: Depths to compare; default 1, the model's n_layers and 4 times it.
        samples: Random initialisations per circuit.
    """

    qubits: list[int] | None = None
    layers: list[int] | None = None
    samples: int = 200


@dataclass(frozen=True)
class RobustnessOptions:
    """Score one checkpoint over a grid of noise levels and shot counts on its validation rows (table, plot).

    Attributes:
        ckpt_path: The checkpoint: ``best``, ``last`` or a file.
        channel: Gate channel after every gate: depolarizing, amplitude_damping, phase_damping, bit_flip or
            phase_flip.
        noise_levels: The channel's probabilities to score at (0: none).
        shots: Shot counts to score at; null for exact expectation values.
        repeats: Scores per cell with shots, from seeds seed, seed + 1, ... (mean and sd reported).
        seed: First seed of every cell.
        twin_ckpt: Checkpoint of the classical twin (--model.core classical, same fold) for its reference line.
        split: The rows scored: val (default), the validation rows, to choose on; test, the fold's test rows, only
            for the final report of a choice already made (every report written names it).
    """

    ckpt_path: str | None = None
    channel: str = "depolarizing"
    noise_levels: list[float] = field(default_factory=lambda: [0.0, 0.001, 0.01, 0.05])
    shots: list[int | None] = field(default_factory=lambda: [None, 1000, 100])
    repeats: int = 3
    seed: int = 0
    twin_ckpt: str | None = None
    split: Literal["val", "test"] = "val"


@dataclass(frozen=True)
class ExportOptions:
    """Write a checkpoint as one ONNX model: raw feature rows in, class probabilities out (no torch needed to run it).

    The model holds the checkpoint's preprocessing, the pre-net, the circuit in real arithmetic and the post-net;
    class and feature names are in its metadata (see docs/shipping.md).

    Attributes:
        ckpt_path: The checkpoint: ``best``, ``last`` or a file.
        output: The ONNX file to write (refused if it exists); default: a free ``model.onnx`` in the checkpoint's run
            folder (``model_1.onnx``, ... if taken).
        int8: Also write the INT8 variant (ONNX Runtime dynamic quantization of the classical layers) beside it,
            ``<name>_int8.onnx``.
    """

    ckpt_path: str | None = None
    output: str | None = None
    int8: bool = False


@dataclass(frozen=True)
class ServeOptions:
    """Serve a checkpoint's ONNX model over HTTP: POST /predict with rows by feature name, GET /health.

    Attributes:
        ckpt_path: The checkpoint: ``best``, ``last`` or a file.
        host: Address to listen on; 127.0.0.1 (this machine only) unless you name another.
        port: Port to listen on.
        max_rows: Most rows per request, and per batch of concurrent requests.
        max_body_bytes: Largest request body accepted.
    """

    ckpt_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_rows: int = 1024
    max_body_bytes: int = 1 << 20

    def check(self) -> None:
        """Refuse impossible settings before the model is built."""
        if not 0 <= self.port <= 65535:
            raise QlitError(f"--port must be in 0..65535, got {self.port}")
        if self.max_rows < 1:
            raise QlitError(f"--max_rows must be at least 1, got {self.max_rows}")
        if self.max_body_bytes < 1:
            raise QlitError(f"--max_body_bytes must be at least 1, got {self.max_body_bytes}")


OPTIONS: dict[str, type] = {
    "cv": CVOptions, "tune": TuneOptions, "diagnose": DiagnoseOptions, "robustness": RobustnessOptions,
    "export": ExportOptions, "serve": ServeOptions,
}  # fmt: skip


def options_of(subcommand: str, values: dict[str, Any]) -> Any:
    """The options dataclass of ``subcommand`` from the parsed values of its fields."""
    cls = OPTIONS[subcommand]
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def _subcommand(options: type) -> Any:
    """A `QlitTrainer` method whose signature and docstring are ``options``' fields: what LightningCLI parses.

    qlit runs the command itself (`qlit.cli.QlitCLI`), so the method is never called.
    """
    summary, _, attributes = inspect.getdoc(options).partition("Attributes:")
    hints = typing.get_type_hints(options)
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=L.LightningModule),
        inspect.Parameter(
            "datamodule", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
            annotation=L.LightningDataModule | None,
        ),
    ]  # fmt: skip
    for f in dataclasses.fields(options):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        parameters.append(inspect.Parameter(f.name, keyword, default=default, annotation=hints[f.name]))

    def method(self: Any, *args: Any, **kwargs: Any) -> None:
        raise QlitError(f"this command runs from the command line: qlit {method.__name__} --config <file>")

    method.__name__ = method.__qualname__ = next(k for k, v in OPTIONS.items() if v is options)
    method.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    method.__annotations__ = {p.name: p.annotation for p in parameters[1:]}
    args = attributes.strip("\n")  # getdoc dedented the class docstring: its fields stand four spaces in, as Args do
    method.__doc__ = (
        f"{summary.strip()}\n\nArgs:\n    model: The configured model.\n    "
        f"datamodule: The configured data module.\n{args}\n"
    )
    return method


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
    cv = _subcommand(CVOptions)
    tune = _subcommand(TuneOptions)
    diagnose = _subcommand(DiagnoseOptions)
    robustness = _subcommand(RobustnessOptions)
    export = _subcommand(ExportOptions)
    serve = _subcommand(ServeOptions)
