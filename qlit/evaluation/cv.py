"""``qlit cv``: k-fold cross-validation of the hybrid model beside two classical baselines.

Every fold is trained by its own, freshly parsed CLI object (model, data module and trainer), built
from a copy of the ``qlit cv`` config with ``data.init_args.fold = k``. A fresh object per fold
matters: LightningCLI caches the config it records as hyperparameters, so re-instantiating classes
from one CLI with an edited fold could train fold 0 k times while the files claim otherwise.

Layout, for a TensorBoardLogger ``save_dir=lightning_logs, name=<experiment>``::

    lightning_logs/<experiment>/            the cv folder (``<experiment>/cv_<n>/`` if taken)
        fold_<k>/                           hybrid, fold k: TensorBoard, best.ckpt, config.yaml
        classical_twin/fold_<k>/            the classical twin on the same fold
        cv_summary.json, cv_summary.md      per-fold results, means, spread, 95% CI
        cv_test_acc.png, confusion_matrix.png, cv_config.yaml

A fold keeps only what evaluating it needs: its best checkpoint (the one tested), no ``last.ckpt``
and no INT8 export. Each fold's ``config.yaml`` reproduces it: it is the config the fold ran with
(``last.ckpt`` and export included), except that its logger writes to
``<cv folder>/fold_<k>/version_<n>``, so ``qlit fit --config .../fold_<k>/config.yaml`` never
touches the cv run's own files and ``qlit test --config <same> --ckpt_path best`` finds the
re-run's checkpoint.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import TensorBoardLogger
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, log_loss

from qlit.callbacks.summary import RunSummary
from qlit.errors import QlitError
from qlit.evaluation import plots
from qlit.io.runs import claim_file, tensorboard_loggers, unused_path

METRIC = "test_acc"
BASELINES = {
    "classical_twin": "classical twin",
    "logistic_regression": "logistic regression",
    "majority_class": "majority class",
}
CHECKPOINT_CLASSES = ("ModelCheckpoint", "RunCheckpoint")
STD_NOTE = "sample standard deviation over folds (ddof=1)"
CI_NOTE = "95% CI of the mean: mean ± t(0.975, k-1) · sd / sqrt(k), Student t with k-1 dof, clipped to [0, 1]"


def _tensorboard_args(config: Namespace) -> Namespace:
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
    raise QlitError(f"qlit cv needs a TensorBoardLogger in trainer.logger, got {loggers!r}")


def _class_name(callback: Any) -> str:
    return str(getattr(callback, "class_path", "") or "").rsplit(".", 1)[-1]


def _check_config(config: Namespace) -> None:
    trainer = config.trainer
    if trainer.get("fast_dev_run"):
        raise QlitError(
            "qlit cv tests each fold's best checkpoint; fast_dev_run saves none (drop --trainer.fast_dev_run)"
        )
    if trainer.get("enable_checkpointing") is False:
        raise QlitError("qlit cv tests each fold's best checkpoint; trainer.enable_checkpointing must not be false")
    for callback in trainer.get("callbacks") or []:
        init_args = getattr(callback, "init_args", None)
        if _class_name(callback) in CHECKPOINT_CLASSES and init_args is not None and init_args.get("dirpath"):
            raise QlitError(
                f"ModelCheckpoint dirpath={init_args.dirpath!r} would be shared by all folds; "
                "remove it so each fold keeps its checkpoints in its own folder"
            )


def _evaluation_only(config: Namespace) -> None:
    """Drop what a fold does not need: it is tested on its best checkpoint, never resumed or shipped.

    No ``last.ckpt`` and no INT8 export; re-running the fold's saved config with ``qlit fit`` writes both.
    """
    callbacks = [cb for cb in config.trainer.get("callbacks") or [] if _class_name(cb) != "Int8Quantization"]
    for callback in callbacks:
        if _class_name(callback) in CHECKPOINT_CLASSES and callback.get("init_args") is not None:
            callback.init_args.save_last = False
    config.trainer.callbacks = callbacks
    # ten trainings' progress bars would bury the one line per fold
    config.trainer.enable_progress_bar = False
    config.trainer.enable_model_summary = False


def _taken(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier cv run (also one written before cv runs claimed folders)."""
    return folder.exists() and (
        any(folder.glob("cv_summary*.json"))
        or any(folder.glob("cv_config*.yaml"))
        or any(folder.glob("fold_*"))
        or (folder / "classical_twin").exists()
    )


def cv_folder_name(save_dir: str | Path, name: str) -> str:
    """``name``, or ``name/cv_<n>`` with the first free ``n`` when ``name`` already holds a cv run."""
    if not _taken(Path(save_dir) / name):
        return name
    n = 1
    while _taken(Path(save_dir) / name / f"cv_{n}"):
        n += 1
    return f"{name}/cv_{n}"


def claim_cv_folder(save_dir: str | Path, name: str) -> str:
    """Claim a cv folder for this run, atomically, and return its name below ``save_dir``.

    The claim is the exclusive creation of the folder's ``cv_config.yaml``: of two cv runs of one
    experiment started together, exactly one gets each folder, and the other moves on to the next
    ``cv_<n>``. Nothing an earlier run wrote is ever reused or overwritten.
    """
    while True:  # a folder another run claimed first is taken now, so the next try moves on
        candidate = cv_folder_name(save_dir, name)
        if claim_file(Path(save_dir) / candidate / "cv_config.yaml"):
            return candidate


def interval(values: Sequence[float], clip: bool = True) -> dict[str, Any]:
    """Mean, sample sd and 95% Student-t interval (k-1 dof) of the mean of per-fold values.

    Accuracies are clipped to [0, 1]; paired differences (``clip=False``) are not.
    """
    values = np.asarray(values, dtype=float)
    k = len(values)
    mean = float(values.mean())
    sd = float(values.std(ddof=1)) if k > 1 else 0.0
    half = float(stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)) if k > 1 else float("nan")
    low, high = mean - half, mean + half
    return {"mean": mean, "std": sd, "ci95": [max(0.0, low), min(1.0, high)] if clip else [low, high]}


class _Fold:
    """One trained and tested network on one fold: its CLI, metrics and test-set predictions."""

    def __init__(self, cli_class: type, config: Namespace, fold: int, name: str) -> None:
        config = config.clone()
        config.pop("config", None)
        config.data.init_args.fold = fold
        logger = _tensorboard_args(config)
        logger.name, logger.version = name, f"fold_{fold}"
        reproduce = config.clone()
        reproduce_logger = _tensorboard_args(reproduce)
        reproduce_logger.name, reproduce_logger.version = f"{name}/fold_{fold}", None
        _evaluation_only(config)
        with warnings.catch_warnings():
            # the args come from the parsed `qlit cv` command line, not from a second one
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            self.cli = cli_class(args=config, run=False)
        self.saver = next(cb for cb in self.cli.trainer.callbacks if isinstance(cb, SaveConfigCallback))
        self.saver.config = reproduce
        for callback in self.cli.trainer.callbacks:
            if isinstance(callback, RunSummary):
                callback.verbose = False  # cv prints one line per fold instead
        self.fold = fold

    def run(self) -> None:
        trainer, model, data = self.cli.trainer, self.cli.model, self.cli.datamodule
        if trainer.checkpoint_callback is None:
            raise QlitError("qlit cv tests each fold's best checkpoint; the trainer has no ModelCheckpoint")
        trainer.fit(model, datamodule=data)
        tested = trainer.test(model, datamodule=data, ckpt_path="best", verbose=False)[0]
        self.metrics = {key: float(value) for key, value in tested.items()}
        self.best_checkpoint = trainer.checkpoint_callback.best_model_path
        self.tensorboard = next(lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger))
        self.log_dir = Path(self.tensorboard.log_dir)
        self.config_path = Path(trainer.log_dir) / self.saver.config_filename
        # trainer.test loaded the best checkpoint into `model`; predict the test fold with it
        model.eval()
        with torch.no_grad():
            probs = [model.predict_proba(x.to(model.device)).cpu() for x, _ in data.test_dataloader()]
        self.predicted = torch.cat(probs).argmax(-1).numpy()
        self.data = data
        self.true = data.y[data.indices["test"]]
        self.confusion = confusion_matrix(self.true, self.predicted, labels=range(data.num_classes))

    @property
    def data_fold(self) -> int:
        return int(self.cli.trainer.datamodule.fold)

    def record(self) -> dict[str, Any]:
        return {
            "fold": self.fold,
            METRIC: self.metrics[METRIC],
            "test_loss": self.metrics["test_loss"],
            "n_test": len(self.data.indices["test"]),
            "n_train": len(self.data.indices["train"]),
            "n_val": len(self.data.indices["val"]),
            "data_fold": self.data_fold,
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

    def close(self) -> None:
        self.tensorboard.experiment.close()


def _json(summary: dict[str, Any]) -> str:
    """Indented JSON with lists of numbers kept on one line (test indices, confusion matrices)."""
    text = json.dumps(summary, indent=2)

    def one_line(match: re.Match) -> str:
        return " ".join(match.group(0).split()).replace("[ ", "[").replace(" ]", "]")

    return re.sub(r"\[[-0-9.eE+,\s]*\]", one_line, text) + "\n"


def _logistic_regression(data) -> dict[str, Any]:
    """Fit scikit-learn's logistic regression on the fold's preprocessed training rows; test it."""
    features = {split: data.preprocessor.transform(data.x[rows]).numpy() for split, rows in data.indices.items()}
    labels = {split: data.y[rows] for split, rows in data.indices.items()}
    lr = LogisticRegression(max_iter=5000).fit(features["train"], labels["train"])
    probs = lr.predict_proba(features["test"])
    predicted = lr.classes_[probs.argmax(1)]
    classes = list(range(data.num_classes))
    return {
        METRIC: float((predicted == labels["test"]).mean()),
        "test_loss": float(log_loss(labels["test"], probs, labels=list(lr.classes_))),
        "n_test": len(labels["test"]),
        "confusion_matrix": confusion_matrix(labels["test"], predicted, labels=classes).tolist(),
    }


def _majority_class(data) -> dict[str, Any]:
    """The constant classifier: the training rows' most frequent class, scored on the test fold."""
    train, test = data.y[data.indices["train"]], data.y[data.indices["test"]]
    counts = np.bincount(train, minlength=data.num_classes)
    constant = int(counts.argmax())
    test_counts = np.bincount(test, minlength=data.num_classes)
    predicted = np.full(len(test), constant)
    return {
        METRIC: float((test == constant).mean()),
        "predicted_class": data.class_names[constant],
        "n_test": len(test),
        "test_base_rate": float(test_counts.max() / len(test)),
        "test_class_shares": {name: float(c / len(test)) for name, c in zip(data.class_names, test_counts)},
        "confusion_matrix": confusion_matrix(test, predicted, labels=list(range(data.num_classes))).tolist(),
    }


def _pca_figure(fold: _Fold) -> None:
    """For PCA-reduced data (SNPs): all individuals on the fold's first two PCs, by class."""
    state = fold.data.preprocessor.state
    if "pca_components" not in state or state["pca_components"].shape[0] < 2:
        return
    x = torch.as_tensor(fold.data.x, dtype=torch.float64)
    scores = ((x - state["pca_mean"]) @ state["pca_components"][:2].T).numpy()
    test_mask = np.zeros(len(x), dtype=bool)
    test_mask[fold.data.indices["test"]] = True
    fig = plots.pca_scatter_figure(
        scores, fold.data.y, test_mask, fold.data.class_names,
        f"fold {fold.fold}: PCA fit on the training rows; x = test fold",
    )
    fold.log_figure("data/pca", fig, "pca.png")


def _summary_table(summary: dict[str, Any]) -> str:
    """The markdown table of ``cv_summary.md``."""
    names = {"hybrid": "hybrid", **BASELINES}
    per_model = {"hybrid": summary["folds"], **{b: summary["baselines"][b]["folds"] for b in BASELINES}}
    stats_of = {"hybrid": summary, **{b: summary["baselines"][b] for b in BASELINES}}
    k = summary["num_folds"]
    lines = [
        f"## Cross-validation: {summary['experiment']} ({k} folds)",
        "",
        f"`{METRIC}`: accuracy on each held-out test fold ({summary['checkpoint']}).",
        "",
        "| fold | n_test | " + " | ".join(names.values()) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for i, record in enumerate(summary["folds"]):
        cells = [f"{per_model[m][i][METRIC]:.3f}" for m in names]
        lines.append(f"| {record['fold']} | {record['n_test']} | " + " | ".join(cells) + " |")
    n_total = sum(r["n_test"] for r in summary["folds"])
    means = [f"**{stats_of[m][f'{METRIC}_mean']:.3f} ± {stats_of[m][f'{METRIC}_std']:.3f}**" for m in names]
    cis = ["{:.3f} – {:.3f}".format(*stats_of[m][f"{METRIC}_ci95"]) for m in names]
    lines += [
        f"| **mean ± sd** | {n_total} | " + " | ".join(means) + " |",
        "| 95% CI of the mean | | " + " | ".join(cis) + " |",
        "",
    ]
    for key, label in BASELINES.items():
        d = summary["paired_differences"][f"hybrid_minus_{key}"]
        lines.append(
            f"- hybrid − {label}: {d['mean']:+.3f} "
            f"(95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}, paired over folds)"
        )
    lines += [
        "",
        (
            f"sd: {STD_NOTE}. {CI_NOTE}. The classical twin replaces the quantum layer by Linear + tanh of the "
            "same width, trained identically; logistic regression (scikit-learn, default L2, C=1) is fit on the "
            "same preprocessed training rows; the majority class always predicts the training rows' most frequent "
            "class, so its accuracy is the base rate any model must beat. Each fold's `config.yaml` reproduces "
            "it with `qlit fit` then `qlit test`."
        ),
        "",
    ]
    return "\n".join(lines)


def _with_stats(folds: list[dict[str, Any]]) -> dict[str, Any]:
    s = interval([f[METRIC] for f in folds])
    return {"folds": folds, f"{METRIC}_mean": s["mean"], f"{METRIC}_std": s["std"], f"{METRIC}_ci95": s["ci95"]}


def cross_validate(cli_class: type, config: Namespace, full_config: str) -> dict[str, Any]:
    """Run ``qlit cv``: every fold of the configured data module, the hybrid and its baselines.

    Args:
        cli_class: The CLI class (``QlitCLI``) that builds one fold's model, data and trainer.
        config: The parsed ``qlit cv`` config (its ``cv`` namespace).
        full_config: The whole command's config as YAML (``parser.dump``), saved as ``cv_config.yaml``.

    Returns:
        The summary written to ``cv_summary.json``.
    """
    config = config.clone()
    config.pop("config", None)
    _check_config(config)
    logger = _tensorboard_args(config)
    if not logger.get("name"):
        raise QlitError(
            "qlit cv needs trainer.logger.init_args.name, the experiment folder its folds go in; "
            f"got {logger.get('name')!r}"
        )
    num_folds = int(config.data.init_args.num_folds)
    name = claim_cv_folder(logger.save_dir, logger.name)
    cv_dir = Path(logger.save_dir) / name
    saved = yaml.safe_load(full_config).get("cv", {})
    saved.pop("config", None)
    (cv_dir / "cv_config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    print(f"qlit cv: {num_folds} folds, logging to {cv_dir}", flush=True)

    hybrid, twin, logistic, majority = [], [], [], []
    class_names: list[str] = []
    checkpoint = ""
    for k in range(num_folds):
        fold = _Fold(cli_class, config, k, name)
        fold.run()
        class_names = list(fold.data.class_names)
        monitor = fold.cli.trainer.checkpoint_callback.monitor
        checkpoint = f"best checkpoint by {monitor}" if monitor else "last checkpoint"
        record = fold.record()
        record["test_indices"] = fold.data.indices["test"].tolist()
        fold.log_confusion_matrix("hybrid")
        _pca_figure(fold)
        lr = {"fold": k, **_logistic_regression(fold.data)}
        constant = {"fold": k, **_majority_class(fold.data)}
        record["test_base_rate"] = constant["test_base_rate"]
        fold.close()

        twin_config = config.clone()
        twin_config.model.core = "classical"
        twin_fold = _Fold(cli_class, twin_config, k, f"{name}/classical_twin")
        twin_fold.run()
        if not np.array_equal(twin_fold.data.indices["test"], fold.data.indices["test"]):
            raise RuntimeError(f"fold {k}: the classical twin was tested on other rows than the hybrid")
        twin_record = twin_fold.record()
        twin_fold.log_confusion_matrix("classical twin")
        twin_fold.close()

        hybrid.append(record)
        twin.append(twin_record)
        logistic.append(lr)
        majority.append(constant)
        print(
            f"qlit cv: fold {k + 1}/{num_folds} (n_test {record['n_test']}): {METRIC} hybrid {record[METRIC]:.3f}"
            f" | classical twin {twin_record[METRIC]:.3f} | logistic regression {lr[METRIC]:.3f}"
            f" | majority class {constant[METRIC]:.3f}",
            flush=True,
        )

    summary: dict[str, Any] = {
        "metric": METRIC,
        "experiment": name,
        "cv_dir": str(cv_dir),
        "num_folds": num_folds,
        "data": config.data.class_path,
        "class_names": class_names,
        "seed_everything": config.get("seed_everything"),
        "checkpoint": checkpoint,
        "std": STD_NOTE,
        "ci95_method": CI_NOTE,
        **_with_stats(hybrid),
        "test_loss_mean": float(np.mean([r["test_loss"] for r in hybrid])),
        "baselines": {
            "classical_twin": {
                **_with_stats(twin),
                "model": "HybridClassifier(core='classical'): Linear(n_qubits, n_qubits) + tanh instead of the circuit",
            },
            "logistic_regression": {
                **_with_stats(logistic),
                "model": "sklearn LogisticRegression(max_iter=5000), fit on the fold's preprocessed training rows",
            },
            "majority_class": {
                **_with_stats(majority),
                "model": "always the most frequent class of the fold's training rows (the base rate to beat)",
            },
        },
        "paired_differences": {
            f"hybrid_minus_{b}": interval([h[METRIC] - r[METRIC] for h, r in zip(hybrid, records)], clip=False)
            for b, records in zip(BASELINES, (twin, logistic, majority))
        },
    }
    json_path = unused_path(cv_dir / "cv_summary.json")
    json_path.write_text(_json(summary))
    table = _summary_table(summary)
    md_path = unused_path(cv_dir / "cv_summary.md")
    md_path.write_text(table)

    series = {"hybrid": [r[METRIC] for r in hybrid]}
    for key, label in BASELINES.items():
        series[label] = [r[METRIC] for r in summary["baselines"][key]["folds"]]
    bars = plots.fold_bars_figure(range(num_folds), series, f"{name}: {METRIC} per fold")
    bars_path = plots.save_png(bars, unused_path(cv_dir / "cv_test_acc.png"))
    pooled = np.sum([r["confusion_matrix"] for r in hybrid], axis=0)
    pooled_figure = plots.confusion_matrix_figure(pooled, class_names, f"hybrid, all {num_folds} test folds")
    pooled_path = plots.save_png(pooled_figure, unused_path(cv_dir / "confusion_matrix.png"))
    print("\n" + table, flush=True)
    print(f"qlit cv: wrote {json_path}, {md_path}, {bars_path} and {pooled_path}", flush=True)
    return summary
