"""Training one config on one fold: the unit of work that ``qlit cv`` and ``qlit tune`` hand to a runner.

A fold is trained by its own, freshly parsed CLI object (model, data module and trainer), built from a
copy of the command's config with ``data.init_args.fold = k``. A fresh object per fold matters:
LightningCLI caches the config it records as hyperparameters, so re-instantiating classes from one CLI
with an edited fold could train fold 0 k times while the files claim otherwise.

`run_fold` takes a `FoldJob` and returns plain, picklable results, so the same function runs in the
driver (serial) or in a Ray worker (`qlit.engine.runner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger

from qlit.callbacks.summary import RunSummary
from qlit.engine.build import build_run
from qlit.engine.predictions import Predictions
from qlit.errors import QlitError
from qlit.evaluation import baselines, plots, tuned_baselines
from qlit.evaluation.metrics import SCORES, scores
from qlit.evaluation.stats import METRIC
from qlit.io.runs import tensorboard_loggers, unused_path

CHECKPOINT_CLASSES = ("ModelCheckpoint", "RunCheckpoint")


def tensorboard_args(config: Namespace) -> Namespace:
    """The ``init_args`` of the config's TensorBoardLogger, adding the default one if none is set."""
    loggers = config.trainer.get("logger")
    if loggers is None or loggers is True:
        root = config.trainer.get("default_root_dir") or "."
        config.trainer.logger = Namespace(
            class_path="lightning.pytorch.loggers.TensorBoardLogger",
            init_args=Namespace(save_dir=str(Path(root) / "lightning_logs"), name="cv", version=None),
        )
        return config.trainer.logger.init_args
    found = tensorboard_loggers(config)
    if found:
        return found[0]
    raise QlitError(f"this command needs a TensorBoardLogger in trainer.logger, got {loggers!r}")


def class_name(callback: Any) -> str:
    return str(getattr(callback, "class_path", "") or "").rsplit(".", 1)[-1]


def check_fold_config(config: Namespace, command: str = "qlit cv") -> None:
    """Refuse settings under which folds could not each be trained and tested on their own."""
    trainer = config.trainer
    if trainer.get("fast_dev_run"):
        raise QlitError(
            f"{command} tests each fold's best checkpoint; fast_dev_run saves none (drop --trainer.fast_dev_run)"
        )
    if trainer.get("enable_checkpointing") is False:
        raise QlitError(f"{command} tests each fold's best checkpoint; trainer.enable_checkpointing must not be false")
    for callback in trainer.get("callbacks") or []:
        init_args = getattr(callback, "init_args", None)
        if class_name(callback) in CHECKPOINT_CLASSES and init_args is not None and init_args.get("dirpath"):
            raise QlitError(
                f"ModelCheckpoint dirpath={init_args.dirpath!r} would be shared by all folds; "
                "remove it so each fold keeps its checkpoints in its own folder"
            )


def evaluation_only(config: Namespace) -> None:
    """Drop what a fold does not need: it is tested on its best checkpoint, never resumed or shipped.

    No ``last.ckpt`` and no INT8 export; re-running the fold's saved config with ``qlit fit`` writes both.
    """
    callbacks = [cb for cb in config.trainer.get("callbacks") or [] if class_name(cb) != "Int8Quantization"]
    for callback in callbacks:
        if class_name(callback) in CHECKPOINT_CLASSES and callback.get("init_args") is not None:
            callback.init_args.save_last = False
    config.trainer.callbacks = callbacks
    # ten trainings' progress bars would bury the one line per fold
    config.trainer.enable_progress_bar = False
    config.trainer.enable_model_summary = False


@dataclass(frozen=True)
class FoldJob:
    """One training: a parsed config, the fold it trains and tests on, and the experiment folder it logs to.

    Attributes:
        config: The command's parsed config (``data.init_args.fold`` is set from ``fold``).
        fold: The outer fold: its rows are the test set, scored once with the best checkpoint.
        name: The folder below the logger's ``save_dir``; the fold logs to ``<name>/fold_<k>``.
        label: What the report calls this model ("hybrid", "classical twin", ...).
        baselines: Also fit logistic regression and the majority class on the fold's rows.
        tuned_baselines: With ``baselines``, also an RBF SVM and gradient boosting, tuned on the training rows.
    """

    config: Namespace
    fold: int
    name: str
    label: str = "hybrid"
    baselines: bool = False
    tuned_baselines: bool = False


class _Fold:
    """One trained and tested network on one fold: its CLI, metrics and test-set predictions."""

    def __init__(self, config: Namespace, fold: int, name: str) -> None:
        config = config.clone()
        config.pop("config", None)
        config.data.init_args.fold = fold
        logger = tensorboard_args(config)
        logger.name, logger.version = name, f"fold_{fold}"
        reproduce = config.clone()
        reproduce_logger = tensorboard_args(reproduce)
        reproduce_logger.name, reproduce_logger.version = f"{name}/fold_{fold}", None
        evaluation_only(config)
        self.cli = build_run(config)
        self.saver = next(cb for cb in self.cli.trainer.callbacks if isinstance(cb, SaveConfigCallback))
        self.saver.config = reproduce
        for callback in self.cli.trainer.callbacks:
            if isinstance(callback, RunSummary):
                callback.verbose = False  # the command prints one line per fold instead
        self.fold = fold

    def run(self) -> None:
        trainer, model, data = self.cli.trainer, self.cli.model, self.cli.datamodule
        if trainer.checkpoint_callback is None:
            raise QlitError("each fold is tested on its best checkpoint; the trainer has no ModelCheckpoint")
        trainer.fit(model, datamodule=data)
        # One pass over the test rows gives every test number: the logged loss and accuracy and the confusion
        # matrix (under shots a second pass would be another random draw, and the table and figure could disagree).
        model.keep_test_logits()
        try:
            tested = trainer.test(model, datamodule=data, ckpt_path="best", verbose=False)[0]
            logits = torch.cat(model.test_logits)
        finally:
            model.test_logits = None
        self.best_checkpoint = trainer.checkpoint_callback.best_model_path
        self.tensorboard = next(lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger))
        self.log_dir = Path(self.tensorboard.log_dir)
        self.config_path = Path(trainer.log_dir) / self.saver.config_filename
        self.data = data
        true = data.labels("test")
        if len(logits) != len(true):
            raise QlitError(f"the test pass scored {len(logits)} of the fold's {len(true)} test rows")
        self.predictions = Predictions.from_logits(model, logits, true)
        self.confusion = self.predictions.confusion_matrix()
        self.metrics = {key: float(value) for key, value in tested.items()}
        # every score from the same predictions, accuracy as an exact ratio (the logged one is float32)
        self.metrics.update(scores(true, self.predictions.probabilities, self.predictions.predicted))

    def record(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            **{key: self.metrics[key] for key in SCORES},
            "test_loss": self.metrics["test_loss"],
            "n_test": len(self.data.indices["test"]),
            "n_train": len(self.data.indices["train"]),
            "n_val": len(self.data.indices["val"]),
            "data_fold": int(self.cli.trainer.datamodule.fold),
            "data_sha256": self.data.data_sha256(),
            "log_dir": str(self.log_dir),
            "config": str(self.config_path),
            "best_checkpoint": str(self.best_checkpoint),
            "confusion_matrix": self.confusion.tolist(),
        }

    def log_figure(self, tag: str, fig, filename: str) -> Path:
        """Save ``fig`` as a PNG in the fold folder and as a TensorBoard image."""
        image = plots.render(fig)
        path = plots.save_png(image, unused_path(self.log_dir / filename))
        experiment = self.tensorboard.experiment
        plots.log_image(experiment, tag, image, step=self.cli.trainer.global_step)
        experiment.flush()
        return path

    def log_confusion_matrix(self, label: str) -> None:
        title = f"{label}, fold {self.fold}: {METRIC} {self.metrics[METRIC]:.3f}"
        fig = plots.confusion_matrix_figure(self.confusion, self.data.class_names, title)
        self.log_figure("test/confusion_matrix", fig, "confusion_matrix.png")

    def log_pca(self) -> None:
        """For PCA-reduced data (SNPs): all rows on the fold's first two PCs, by class, test rows marked."""
        scores = self.data.pca_scores()
        if scores is None:
            return
        test_mask = np.zeros(len(scores), dtype=bool)
        test_mask[self.data.indices["test"]] = True
        fig = plots.pca_scatter_figure(
            scores,
            self.data.y,
            test_mask,
            self.data.class_names,
            f"fold {self.fold}: PCA fit on the training rows; x = test fold",
        )
        self.log_figure("data/pca", fig, "pca.png")

    def log_scores(self, records: dict[str, dict[str, Any]]) -> None:
        """Every model's scores on this fold as TensorBoard scalars, ``test_scores/<model>/<score>``."""
        experiment = self.tensorboard.experiment
        for model, record in records.items():
            for key in SCORES:
                if record.get(key) is not None:
                    experiment.add_scalar(f"test_scores/{model}/{key}", record[key], self.cli.trainer.global_step)
        experiment.flush()

    def close(self) -> None:
        self.tensorboard.experiment.close()


def run_fold(job: FoldJob) -> dict[str, Any]:
    """Train ``job``'s config on its fold, test the best checkpoint on the fold's test rows.

    Returns:
        Plain data: ``record`` (scores, sizes, files, confusion matrix), ``test_indices``, ``class_names``,
        ``checkpoint`` (which checkpoint was tested), ``predictions`` (each model's ``probabilities`` and
        ``predicted`` classes on the test rows, in ``test_indices`` order) and, with ``job.baselines``, the fold's
        ``logistic_regression`` and ``majority_class`` records (and more with ``job.tuned_baselines``).
    """
    fold = _Fold(job.config, job.fold, job.name)
    fold.run()
    monitor = fold.cli.trainer.checkpoint_callback.monitor
    ids = fold.data.row_ids()
    own = {"probabilities": fold.predictions.probabilities, "predicted": fold.predictions.predicted}
    result: dict[str, Any] = {
        "record": fold.record(),
        "test_indices": fold.data.indices["test"].tolist(),
        "test_ids": [ids[i] for i in fold.data.indices["test"]],
        "test_labels": fold.data.labels("test").tolist(),
        "class_names": list(fold.data.class_names),
        "checkpoint": f"best checkpoint by {monitor}" if monitor else "last checkpoint",
        "predictions": {"model": own},
    }
    if hasattr(fold.data, "fold_spans"):
        result["spans"] = fold.data.fold_spans()
    fold.log_confusion_matrix(job.label)
    logged = {job.label.replace(" ", "_"): result["record"]}
    if job.baselines:
        fold.log_pca()
        fits = {
            "logistic_regression": baselines.logistic_regression(fold.data),
            "majority_class": baselines.majority_class(fold.data),
        }
        if job.tuned_baselines:
            seed = int(fold.data.split_seed)
            fits["svm_rbf"] = baselines.scored(fold.data, tuned_baselines.svm_rbf(fold.data, seed))
            fits["gradient_boosting"] = baselines.scored(fold.data, tuned_baselines.gradient_boosting(fold.data, seed))
        for name, fitted in fits.items():
            result["predictions"][name] = {"probabilities": fitted["probabilities"], "predicted": fitted["predicted"]}
            result[name] = logged[name] = {"fold": job.fold, **baselines.without_arrays(fitted)}
    fold.log_scores(logged)
    fold.close()
    return result
