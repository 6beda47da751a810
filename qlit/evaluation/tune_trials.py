"""The trials of one ``qlit tune`` search: what runs on Ray Tune's workers, and the Tuner that starts them.

A trial trains its sampled config on every inner fold of its search's rows (`trial_config`, `run_trial`), reports
each validation epoch to Ray Tune (`InnerFoldReport`, which ASHA acts on) and ends with the mean of each inner
fold's best ``val_loss`` (`SCORE`). `tuner` builds the search (a new one, or one restored from verified state),
`trial_records` reads its results back as plain data.

TensorBoard gets one run per trial and inner fold (``outer_<k>/<trial>/inner_<j>/``, Lightning's training curves),
and each such run one entry in the HParams tab (`TrialBoard`): the tuned keys, the trial, its outer and inner fold,
the trial's score and the inner fold's best epoch. Ray Tune's own TensorBoard logger is left out (`ray_callbacks`):
its copy of every trial under ``ray/`` showed each trial twice.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from qlit.callbacks.summary import RunSummary
from qlit.commands import TuneOptions
from qlit.engine import runner
from qlit.engine.build import build_run
from qlit.errors import QlitError
from qlit.evaluation.folds import class_name, tensorboard_args
from qlit.evaluation.report import plain
from qlit.evaluation.space import apply, ray_space
from qlit.evaluation.tune_state import verify_state

SCORE = "inner_val_loss_mean"
# A trial's callbacks: the ones that pick, save or ship checkpoints have nothing to do in a trial, and
# EarlyStopping would make trials of one search report different epochs at the same iteration (ASHA compares those).
TRIAL_DROPS = ("RunCheckpoint", "ModelCheckpoint", "EarlyStopping", "Int8Quantization")
# The metrics of a trial's inner fold in TensorBoard's HParams tab: the trial's score and mean accuracy (once all its
# inner folds are done), and this inner fold's best epoch (so far, in a trial ASHA stopped).
TRIAL_METRICS = (f"hp/{SCORE}", "hp/inner_val_acc_mean", "hp/best_val_loss", "hp/best_val_acc")


class TrialBoard:
    """One trial's inner fold in TensorBoard's HParams tab, written into its Lightning run's folder.

    The hyperparameters are written when the inner fold starts, so a trial that ASHA stops is in the tab too, with
    its best epoch so far; `log` adds metrics as they come. Every write is flushed at once: Ray may end a stopped
    trial's thread (or its worker) without it ever returning.

    Args:
        log_dir: The run folder (``outer_<k>/<trial>/inner_<j>``).
        hparams: The HParams tab's columns (`trial_hparams`).
    """

    def __init__(self, log_dir: str | Path, hparams: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        # absolute: Ray changes a reused worker's directory between trials, and the writer reopens its file by name
        self.writer: Any = SummaryWriter(log_dir=str(Path(log_dir).resolve()))
        experiment, start, self._end = hparams_summaries(hparams, dict.fromkeys(TRIAL_METRICS, 0.0))
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)
        self.writer.flush()

    def log(self, metrics: dict[str, float], step: int = 0) -> None:
        """Add the finite ones of ``metrics`` (``hp/...``) at ``step``; the HParams tab shows each one's last value."""
        for tag, value in metrics.items():
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self, complete: bool) -> None:
        """Close the run's writer (once); a ``complete`` trial's run is marked as a finished session."""
        if self.writer is None:
            return
        if complete:
            self.writer.file_writer.add_summary(self._end)
        self.writer.close()
        self.writer = None


def trial_hparams(setup: TrialSetup, params: dict[str, Any], inner_fold: int, trial: str) -> dict[str, Any]:
    """The HParams tab's columns for one trial's inner fold: each tuned key, the trial, the outer and inner fold.

    ``outer_fold`` is text (``"0"``, ..., or ``"all"`` in the search over all rows), so one column holds both kinds.
    A value TensorBoard cannot show as it is (a list, ``None``) is shown as text.
    """
    shown = {}
    for key, value in plain(params).items():
        shown[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    outer = "all" if setup.outer_fold is None else str(setup.outer_fold)
    return {**shown, "trial": trial, "outer_fold": outer, "inner_fold": inner_fold}


class InnerFoldReport(Callback):
    """Report every validation epoch of a trial's inner fold to Ray Tune, and keep its best epoch.

    Ray's own ``TuneReportCheckpointCallback`` reports the same way (``ray.tune.report`` after each validation);
    this one adds which inner fold the epoch belongs to, and saves no checkpoints.
    """

    def __init__(self, inner_fold: int, done: list[dict[str, float]], board: TrialBoard | None = None) -> None:
        self.inner_fold = inner_fold
        self.done = done  # the best epochs of the trial's earlier inner folds
        self.board = board  # where the best epoch so far goes in TensorBoard's HParams tab
        self.best: dict[str, float] = {"val_loss": math.inf, "val_acc": math.nan, "epoch": -1}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        from ray import tune

        metrics = trainer.callback_metrics
        loss, acc = float(metrics["val_loss"]), float(metrics.get("val_acc", math.nan))
        if loss < self.best["val_loss"]:
            self.best = {"val_loss": loss, "val_acc": acc, "epoch": trainer.current_epoch}
        if self.board is not None:
            best = {"hp/best_val_loss": self.best["val_loss"], "hp/best_val_acc": self.best["val_acc"]}
            self.board.log(best, step=trainer.current_epoch)
        tune.report(
            {
                "val_loss": loss,
                "val_acc": acc,
                "inner_fold": self.inner_fold,
                "epoch": trainer.current_epoch,
                "inner_folds_done": len(self.done),
            }
        )


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one outer fold's search shares (sent to the Ray workers once)."""

    config: Namespace
    outer_fold: int | None  # None: the search over all rows, whose "inner folds" are the data module's folds
    inner_folds: int
    name: str
    cwd: str


def trial_config(setup: TrialSetup, params: dict[str, Any], inner_fold: int, trial: str) -> Namespace:
    """The config one trial trains on one inner fold: sampled values, inner split, no checkpoints.

    In the search over all rows (``setup.outer_fold is None``), inner fold j is the data module's fold j: the
    trial trains on its training rows and is scored on its validation rows, never tested.
    """
    config = apply(setup.config, params)
    if setup.outer_fold is None:
        config.data.init_args.fold = inner_fold
        config.data.init_args.inner_folds = None
    else:
        config.data.init_args.fold = setup.outer_fold
        config.data.init_args.inner_folds = setup.inner_folds
        config.data.init_args.inner_fold = inner_fold
    logger = tensorboard_args(config)
    logger.name, logger.version = f"{setup.name}/{search_name(setup.outer_fold)}/{trial}", f"inner_{inner_fold}"
    logger.default_hp_metric = False  # the run's one HParams entry is TrialBoard's
    config.trainer.callbacks = [cb for cb in config.trainer.get("callbacks") or [] if class_name(cb) not in TRIAL_DROPS]
    config.trainer.enable_checkpointing = False
    config.trainer.enable_progress_bar = False
    config.trainer.enable_model_summary = False
    return config


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """A Ray Tune function trainable: train ``params`` on every inner fold, report, end with the mean.

    Each inner fold is one TensorBoard run, with its `TrialBoard` entry in the HParams tab; the trial's score is
    added to each of them once the last inner fold is done.
    """
    from ray import tune

    runner.as_qlit_worker(setup.cwd)
    trial = tune.get_context().get_trial_id()
    done: list[dict[str, float]] = []
    boards: list[TrialBoard] = []
    try:
        for j in range(setup.inner_folds):
            cli = build_run(trial_config(setup, params, j, trial))
            # RunSummary's HParams entry would be a second one in the run, without the data keys, folds or score
            cli.trainer.callbacks[:] = [cb for cb in cli.trainer.callbacks if not isinstance(cb, RunSummary)]
            log_dir = next(lg.log_dir for lg in cli.trainer.loggers if isinstance(lg, TensorBoardLogger))
            boards.append(TrialBoard(log_dir, trial_hparams(setup, params, j, trial)))
            report = InnerFoldReport(j, done, boards[-1])
            cli.trainer.callbacks.append(report)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            done.append(report.best)
        score = float(np.mean([d["val_loss"] for d in done]))
        accuracy = float(np.mean([d["val_acc"] for d in done]))
        for board in boards:
            board.log({f"hp/{SCORE}": score, "hp/inner_val_acc_mean": accuracy})
            board.close(complete=True)
    finally:  # a trial that failed, or that ASHA stopped (Ray ends its thread with SystemExit at a report)
        for board in boards:
            board.close(complete=False)
    tune.report(
        {
            "val_loss": score,
            SCORE: score,
            "inner_val_acc_mean": accuracy,
            "inner_folds_done": len(done),
            "inner_fold": setup.inner_folds,
        }
    )


def sampler(space: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """Ray Tune's sampling objects for ``space``; what Ray refuses is one line naming the key, before any write."""
    for key, spec in space.items():
        try:
            ray_space({key: spec})
        except (ValueError, TypeError, ZeroDivisionError) as err:
            name, args = spec
            raise QlitError(f"{key}: Ray Tune refuses {{{name}: {args}}}: {str(err).splitlines()[0]}") from None
    return ray_space(space)


def search_name(outer_fold: int | None) -> str:
    """The folder of one search: ``outer_<k>``, or ``all`` for the search over all rows."""
    return "all" if outer_fold is None else f"outer_{outer_fold}"


def ray_callbacks() -> list:
    """Ray Tune's result loggers for a search: its JSON and CSV results, not its TensorBoard copy of every trial.

    Ray adds its CSV, JSON and TensorBoard loggers to every run unless ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` is
    1; its TensorBoard files under ``ray/`` made TensorBoard show each trial twice beside qlit's own runs. Set here
    in the driver, before the search starts.
    """
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    return [JsonLoggerCallback(), CSVLoggerCallback()]


class _FailedTrialNotes(logging.Filter):
    """Drops Ray Tune's traceback of a failed trial and its list of them: qlit prints one line per failed trial,
    and tune_summary.json keeps its error. Ray's other messages pass."""

    DROPPED = ("Trial task failed for trial", "Trials did not complete")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.DROPPED)


def quiet_failed_trials() -> None:
    """Install `_FailedTrialNotes` on the two Ray Tune loggers that report failed trials (once per process)."""
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _FailedTrialNotes) for f in logger.filters):
            logger.addFilter(_FailedTrialNotes())


def tuner(setup: TrialSetup, space: dict, options: TuneOptions, storage: Path, max_epochs: int, seed: int | None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Ray Tune's console tables would bury qlit's one line per outer fold; its results stay in storage_path.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    quiet_failed_trials()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), {"cpu": 1, "gpu": options.gpus_per_trial}
    )
    path = storage / search_name(setup.outer_fold)
    callbacks = ray_callbacks()  # also before a restore, which brings back the callbacks it was started with
    if options.resume and path.exists():
        verify_state(storage.parent, path.name)  # before anything there is unpickled
        if tune.Tuner.can_restore(str(path)):
            return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
        shutil.rmtree(path)  # verified, but Ray saved nothing to restore: start the search afresh
    grid = any(name == "grid" for name, _ in space.values())
    if options.search == "optuna" and not grid:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed))
    else:
        search = BasicVariantGenerator(random_state=seed)
    # iterations: one per validation epoch of each inner fold, then the final mean
    total = setup.inner_folds * max_epochs + 1
    scheduler = (
        ASHAScheduler(time_attr="training_iteration", max_t=total, grace_period=min(options.grace_period, total))
        if options.asha
        else FIFOScheduler()
    )
    return tune.Tuner(
        trainable,
        param_space=sampler(space),
        tune_config=tune.TuneConfig(
            metric="val_loss",
            mode="min",
            num_samples=options.num_samples,
            search_alg=search,
            scheduler=scheduler,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=path.name,
            storage_path=str(storage),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=callbacks,
        ),
    )


def trial_records(results, keys: list[str], inner_folds: int) -> list[dict[str, Any]]:
    """Every trial of one search: its values, score (or the val_loss ASHA stopped it at), and what became of it."""
    trials = []
    for result in results:
        metrics = result.metrics or {}
        complete = metrics.get("inner_folds_done") == inner_folds and SCORE in metrics
        if result.error is not None:
            status = "failed"
        else:
            status = "complete" if complete else "stopped early (ASHA)"
        stopped = status.startswith("stopped")
        record = {
            "trial": Path(result.path).name if result.path else None,
            "trial_id": metrics.get("trial_id"),  # its TensorBoard runs: <search>/<trial_id>/inner_<j>
            "config": {k: (result.config or {}).get(k) for k in keys},
            "status": status,
            SCORE: metrics.get(SCORE) if complete else None,
            "inner_val_acc_mean": metrics.get("inner_val_acc_mean") if complete else None,
            # what ASHA judged a stopped trial on: the val_loss of its last reported epoch
            "val_loss_at_stop": metrics.get("val_loss") if stopped else None,
            "iterations": metrics.get("training_iteration"),
        }
        if result.error is not None:
            record["error"] = str(result.error).strip().splitlines()[-1][:300]
        trials.append(plain(record))
    return trials
