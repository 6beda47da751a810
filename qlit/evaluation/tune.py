"""``qlit tune``: Ray Tune over any config key, scored on validation rows only, with nested cross-validation.

For each outer fold k (every fold with ``nested``, else only ``data.fold``), a Ray Tune search runs on
that fold's non-test rows: a trial trains its sampled config on each of ``inner_folds`` inner folds
(`KFoldDataModule.inner_split`) and is scored by the mean over them of its best validation loss. The
outer test rows are in no split of any trial. The best trial's config is then trained on the outer fold
as ``qlit cv`` trains a fold, and tested once on its test rows, beside the untuned config and logistic
regression on the same fold: the honest estimate of "tune, then train".

Layout, below ``lightning_logs/<experiment>/tune_<n>/``::

    tune_config.yaml                the command's config and options
    outer_<k>/<trial>/inner_<j>/    TensorBoard of every trial's inner folds
    ray/outer_<k>/                  Ray Tune's own results (what --resume restores)
    tuned/fold_<k>/, untuned/fold_<k>/   the final trainings on outer fold k, tested on its test rows
    tune_summary.json, tune_summary.md, tune_scores.png, best_config.yaml, best_config_fold_<k>.yaml
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Callback

from qlit.callbacks.safety import TrainingInterrupted
from qlit.callbacks.summary import RunSummary
from qlit.errors import QlitError
from qlit.evaluation import plots, runner
from qlit.evaluation.baselines import BASELINES
from qlit.evaluation.cv import prepared
from qlit.evaluation.folds import FoldJob, build_cli, class_name, run_fold, tensorboard_args
from qlit.evaluation.report import to_json
from qlit.evaluation.space import apply, apply_to_dict, ray_space, read_space
from qlit.evaluation.stats import CI_NOTE, METRIC, STD_NOTE, paired, with_stats
from qlit.io.runs import claim_version, release_if_empty, unused_path

SCORE = "inner_val_loss_mean"
# Options that say where trials run, not what they are: a resumed sweep may change them.
WHERE = ("resume", "workers", "address", "gpus_per_trial")
# A trial's callbacks: the ones that pick, save or ship checkpoints have nothing to do in a trial, and
# EarlyStopping would make trials of one search report different epochs at the same iteration (ASHA compares those).
TRIAL_DROPS = ("RunCheckpoint", "ModelCheckpoint", "EarlyStopping", "Int8Quantization")


@dataclass
class TuneOptions:
    """The options of ``qlit tune`` (see `qlit.cli.QlitTrainer.tune`)."""

    space: str
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
        runner.ray_module("qlit tune")
        if self.search == "optuna":
            try:
                import optuna  # noqa: F401
            except ImportError:
                raise QlitError("--search optuna needs optuna: pip install optuna (or the ray extra)") from None


class InnerFoldReport(Callback):
    """Report every validation epoch of a trial's inner fold to Ray Tune, and keep its best epoch.

    Ray's own ``TuneReportCheckpointCallback`` reports the same way (``ray.tune.report`` after each validation);
    this one adds which inner fold the epoch belongs to, and saves no checkpoints.
    """

    def __init__(self, inner_fold: int, done: list[dict[str, float]]) -> None:
        self.inner_fold = inner_fold
        self.done = done  # the best epochs of the trial's earlier inner folds
        self.best: dict[str, float] = {"val_loss": math.inf, "val_acc": math.nan, "epoch": -1}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        from ray import tune

        metrics = trainer.callback_metrics
        loss, acc = float(metrics["val_loss"]), float(metrics.get("val_acc", math.nan))
        if loss < self.best["val_loss"]:
            self.best = {"val_loss": loss, "val_acc": acc, "epoch": trainer.current_epoch}
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
    outer_fold: int
    inner_folds: int
    name: str
    cwd: str
    cli_class: type | None = None


def trial_config(setup: TrialSetup, params: dict[str, Any], inner_fold: int, trial: str) -> Namespace:
    """The config one trial trains on one inner fold: sampled values, inner split, no checkpoints."""
    config = apply(setup.config, params)
    config.data.init_args.fold = setup.outer_fold
    config.data.init_args.inner_folds = setup.inner_folds
    config.data.init_args.inner_fold = inner_fold
    logger = tensorboard_args(config)
    logger.name, logger.version = f"{setup.name}/outer_{setup.outer_fold}/{trial}", f"inner_{inner_fold}"
    config.trainer.callbacks = [cb for cb in config.trainer.get("callbacks") or [] if class_name(cb) not in TRIAL_DROPS]
    config.trainer.enable_checkpointing = False
    config.trainer.enable_progress_bar = False
    config.trainer.enable_model_summary = False
    return config


def run_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """A Ray Tune function trainable: train ``params`` on every inner fold, report, end with the mean."""
    from ray import tune

    from qlit.cli import QlitCLI

    runner.as_qlit_worker(setup.cwd)
    trial = tune.get_context().get_trial_id()
    done: list[dict[str, float]] = []
    for j in range(setup.inner_folds):
        cli = build_cli(setup.cli_class or QlitCLI, trial_config(setup, params, j, trial))
        for callback in cli.trainer.callbacks:
            if isinstance(callback, RunSummary):
                callback.verbose = False
        report = InnerFoldReport(j, done)
        cli.trainer.callbacks.append(report)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        done.append(report.best)
    tune.report(
        {
            "val_loss": float(np.mean([d["val_loss"] for d in done])),
            SCORE: float(np.mean([d["val_loss"] for d in done])),
            "inner_val_acc_mean": float(np.mean([d["val_acc"] for d in done])),
            "inner_folds_done": len(done),
            "inner_fold": setup.inner_folds,
        }
    )


def _sampler(space: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    """Ray Tune's sampling objects for ``space``; what Ray refuses is one line naming the key, before any write."""
    for key, spec in space.items():
        try:
            ray_space({key: spec})
        except (ValueError, TypeError, ZeroDivisionError) as err:
            name, args = spec
            raise QlitError(f"{key}: Ray Tune refuses {{{name}: {args}}}: {str(err).splitlines()[0]}") from None
    return ray_space(space)


def _prune_states(path: Path) -> None:
    """Leave only the experiment state Ray Tune restores from (the newest by name) in a finished search's folder.

    A restored search writes its own ``experiment_state-<start time>.json`` beside the interrupted run's, and Ray's
    storage sync copies the old file again with every save, so the old file's modification time keeps up with the
    new one's: a reader going by time could find the interrupted run's PENDING/RUNNING trials in a finished search.
    """
    patterns = ("experiment_state-*.json", "basic-variant-state-*.json", "search_gen_state-*.json",
                "searcher-state-*.pkl", "callback-states-*.pkl")
    for pattern in patterns:
        states = sorted(path.glob(pattern), key=lambda p: p.name)
        for old in states[:-1]:
            old.unlink(missing_ok=True)


def _tuner(setup: TrialSetup, space: dict, options: TuneOptions, storage: Path, max_epochs: int, seed: int | None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Ray Tune's console tables would bury qlit's one line per outer fold; its results stay in storage_path.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), {"cpu": 1, "gpu": options.gpus_per_trial}
    )
    path = storage / f"outer_{setup.outer_fold}"
    if options.resume and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=False)
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
        param_space=_sampler(space),
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
        ),
    )


def _trials(results, keys: list[str], inner_folds: int) -> list[dict[str, Any]]:
    """Every trial of one search: its values, score, and what became of it."""
    trials = []
    for result in results:
        metrics = result.metrics or {}
        complete = metrics.get("inner_folds_done") == inner_folds and SCORE in metrics
        if result.error is not None:
            status = "failed"
        else:
            status = "complete" if complete else "stopped early (ASHA)"
        record = {
            "trial": Path(result.path).name if result.path else None,
            "config": {k: (result.config or {}).get(k) for k in keys},
            "status": status,
            SCORE: metrics.get(SCORE) if complete else None,
            "inner_val_acc_mean": metrics.get("inner_val_acc_mean") if complete else None,
            "iterations": metrics.get("training_iteration"),
        }
        if result.error is not None:
            record["error"] = str(result.error).strip().splitlines()[-1][:300]
        trials.append(_plain(record))
    return trials


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def _folder(save_dir: str, experiment: str, resume: bool) -> Path:
    root = Path(save_dir) / experiment
    if not resume:
        return claim_version(root, prefix="tune")
    unfinished = sorted(
        (
            p
            for p in root.glob("tune_*")
            if (p / "tune_config.yaml").exists() and not (p / "tune_summary.json").exists()
        ),
        key=lambda p: int(p.name.split("_")[-1]) if p.name.split("_")[-1].isdigit() else -1,
    )
    if not unfinished:
        raise QlitError(f"--resume true: no unfinished qlit tune run under {root} (one without tune_summary.json)")
    return unfinished[-1]


def tune_table(summary: dict[str, Any]) -> str:
    """The markdown of ``tune_summary.md``."""
    names = {
        "tuned": "tuned hybrid",
        "untuned": "untuned hybrid",
        **{b: BASELINES[b] for b in ("logistic_regression", "majority_class")},
    }
    lines = [
        f"## Tuning: {summary['experiment']} ({'nested, ' if summary['nested'] else ''}{len(summary['outer_folds'])} "
        f"outer fold{'s' * (len(summary['outer_folds']) != 1)}, {summary['num_samples']} samples each, "
        f"{summary['inner_folds']} inner folds)",
        "",
        f"`{METRIC}` on each outer test fold, never seen by the search; a trial's score is its mean best `val_loss` "
        "over the inner folds of the outer fold's training rows.",
        "",
        "| outer fold | n_test | best config (by inner val_loss) | " + " | ".join(names.values()) + " |",
        "|---:|---:|---|" + "---:|" * len(names),
    ]
    for i, outer in enumerate(summary["outer_folds"]):
        chosen = ", ".join(f"{k}={_short(v)}" for k, v in outer["best_config"].items())
        cells = [f"{summary[m]['folds'][i][METRIC]:.3f}" for m in names]
        lines.append(f"| {outer['fold']} | {outer['n_test']} | {chosen} | " + " | ".join(cells) + " |")
    if len(summary["outer_folds"]) > 1:
        means = [f"**{summary[m][f'{METRIC}_mean']:.3f} ± {summary[m][f'{METRIC}_std']:.3f}**" for m in names]
        cis = ["{:.3f} – {:.3f}".format(*summary[m][f"{METRIC}_ci95"]) for m in names]
        lines += [
            "| **mean ± sd** | | | " + " | ".join(means) + " |",
            "| 95% CI of the mean | | | " + " | ".join(cis) + " |",
        ]
        lines.append("")
        for key, d in summary["paired_differences"].items():
            lines.append(
                f"- {key.replace('_minus_', ' − ').replace('_', ' ')}: {d['mean']:+.3f} "
                f"(95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}, paired over outer folds)"
            )
    lines += ["", f"sd: {STD_NOTE}. {CI_NOTE}.", ""]
    counts: dict[str, int] = {}
    for outer in summary["outer_folds"]:
        for t in outer["trials"]:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
    lines.append("Trials: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + ".")
    lines.append("")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _best_config_yaml(full_config: str, overrides: dict[str, Any]) -> str:
    config = yaml.safe_load(full_config).get("tune", {})
    for key in [k for k in config if k not in ("seed_everything", "trainer", "model", "data")]:
        config.pop(key)
    return yaml.safe_dump(apply_to_dict(config, overrides), sort_keys=False)


def run_tune(cli_class: type, config: Namespace, full_config: str, options: TuneOptions) -> dict[str, Any]:
    """Run ``qlit tune``; returns the summary written to ``tune_summary.json``."""
    options.check()
    space = read_space(options.space, config)
    _sampler(space)
    config, logger = prepared(config, "qlit tune")
    num_folds = int(config.data.init_args.num_folds)
    if config.data.init_args.get("inner_folds") is not None:
        raise QlitError("qlit tune sets data.inner_folds itself; leave it null in the config")
    max_epochs = int(config.trainer.get("max_epochs") or 1000)
    outer_folds = list(range(num_folds)) if options.nested else [int(config.data.init_args.fold)]
    # the sweep to resume is found before Ray starts; a new one claims its folder once Ray answers
    resumed = _folder(logger.save_dir, logger.name, resume=True) if options.resume else None
    ray, started = runner.connect(options.workers, options.address, "--address")  # an unreachable one fails here
    try:
        folder = resumed or _folder(logger.save_dir, logger.name, resume=False)
    except BaseException:
        if started:
            runner.shutdown(ray)
        raise
    try:
        return _run_tune(cli_class, config, full_config, options, space, logger, folder, outer_folds, max_epochs)
    except BaseException:
        if not options.resume and not (folder / "ray").exists():
            # a start that failed before Ray Tune saved anything leaves no tune_<n> for --resume to pick up
            for path in folder.iterdir():
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            release_if_empty(folder)
        raise
    finally:
        if started:
            runner.shutdown(ray)


def _run_tune(
    cli_class: type,
    config: Namespace,
    full_config: str,
    options: TuneOptions,
    space: dict[str, tuple[str, list[Any]]],
    logger: Namespace,
    folder: Path,
    outer_folds: list[int],
    max_epochs: int,
) -> dict[str, Any]:
    name = str(folder.relative_to(Path(logger.save_dir)))
    saved = yaml.safe_load(full_config).get("tune", {})
    saved.pop("config", None)
    if options.resume:
        before = yaml.safe_load((folder / "tune_config.yaml").read_text()) or {}
        changed = sorted(k for k in (set(before) | set(saved)) - set(WHERE) if before.get(k) != saved.get(k))
        if changed:
            raise QlitError(
                f"--resume true goes on with {folder}, which ran with other settings ({', '.join(changed)}); "
                "resume with the command that started it"
            )
        print(f"qlit tune: resuming {folder}", flush=True)
    else:
        (folder / "tune_config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    storage = (folder / "ray").resolve()
    keys = list(space)
    seed = config.get("seed_everything")
    print(
        f"qlit tune: {len(outer_folds)} outer fold{'s' * (len(outer_folds) != 1)} × {options.num_samples} samples × "
        f"{options.inner_folds} inner folds of {', '.join(keys)}; logging to {folder}",
        flush=True,
    )
    searches = []
    for k in outer_folds:
        setup = TrialSetup(config, k, options.inner_folds, name, os.getcwd(), cli_class)
        results = _tuner(setup, space, options, storage, max_epochs, seed).fit()
        if results.num_terminated + results.num_errors < len(results):  # Ray Tune stopped on SIGINT/SIGTERM
            raise TrainingInterrupted(
                signal.SIGINT,
                f"tuning interrupted in outer fold {k}; the finished trials are saved: go on with the same "
                "command plus --resume true",
            )
        _prune_states(storage / f"outer_{k}")
        trials = _trials(results, keys, options.inner_folds)
        complete = [t for t in trials if t[SCORE] is not None and math.isfinite(t[SCORE])]
        if not complete:
            reasons = "; ".join(sorted({t.get("error", t["status"]) for t in trials}))[:300]
            raise QlitError(f"outer fold {k}: no trial of {options.num_samples} completed ({reasons})")
        best = min(complete, key=lambda t: t[SCORE])
        searches.append({"fold": k, "trials": trials, "best_config": best["config"], "best_score": best[SCORE]})
        print(
            f"qlit tune: outer fold {k}: best of {len(trials)} trials {SCORE} {best[SCORE]:.4f} with "
            + ", ".join(f"{key}={_short(v)}" for key, v in best["config"].items()),
            flush=True,
        )

    jobs: list[tuple[str, FoldJob]] = []
    for search in searches:
        k = search["fold"]
        jobs.append(
            (
                "tuned",
                FoldJob(
                    apply(config, search["best_config"]), k, f"{name}/tuned", "tuned hybrid", cli_class=cli_class
                ),
            )
        )
        jobs.append(
            (
                "untuned",
                FoldJob(config, k, f"{name}/untuned", "untuned hybrid", baselines=True, cli_class=cli_class),
            )
        )
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for i, result in runner.run_jobs(
        run_fold, [j for _, j in jobs], options.workers, options.address, options.gpus_per_trial, "--workers"
    ):
        kind, job = jobs[i]
        results[kind, job.fold] = result

    per_model: dict[str, list[dict[str, Any]]] = {
        m: [] for m in ("tuned", "untuned", "logistic_regression", "majority_class")
    }
    for search in searches:
        k = search["fold"]
        tuned, untuned = results["tuned", k], results["untuned", k]
        if tuned["test_indices"] != untuned["test_indices"]:
            raise RuntimeError(f"outer fold {k}: the tuned and untuned models were tested on different rows")
        per_model["tuned"].append(tuned["record"])
        per_model["untuned"].append(untuned["record"])
        per_model["logistic_regression"].append(untuned["logistic_regression"])
        per_model["majority_class"].append(untuned["majority_class"])
        search["n_test"] = tuned["record"]["n_test"]
        print(
            f"qlit tune: outer fold {k}: {METRIC} tuned {tuned['record'][METRIC]:.3f} | untuned "
            f"{untuned['record'][METRIC]:.3f} | logistic regression {untuned['logistic_regression'][METRIC]:.3f} | "
            f"majority class {untuned['majority_class'][METRIC]:.3f}",
            flush=True,
        )
    best_overall = min(searches, key=lambda s: s["best_score"])
    summary: dict[str, Any] = {
        "metric": METRIC,
        "experiment": name,
        "tune_dir": str(folder),
        "nested": options.nested,
        "num_samples": options.num_samples,
        "inner_folds": options.inner_folds,
        "search": options.search,
        "scheduler": "ASHA on val_loss per validation epoch" if options.asha else "none",
        "score": f"{SCORE}: mean over inner folds of each fold's best val_loss (lower is better)",
        "space": {k: {n: a} for k, (n, a) in space.items()},
        "std": STD_NOTE,
        "ci95_method": CI_NOTE,
        "outer_folds": searches,
        **{m: with_stats(records) for m, records in per_model.items()},
        "best_config": best_overall["best_config"],
        "best_config_from_outer_fold": best_overall["fold"],
    }
    if len(searches) > 1:
        summary["paired_differences"] = {
            f"tuned_minus_{m}": paired(per_model["tuned"], per_model[m])
            for m in ("untuned", "logistic_regression", "majority_class")
        }
    for search in searches:
        path = unused_path(folder / f"best_config_fold_{search['fold']}.yaml")
        path.write_text(_best_config_yaml(full_config, search["best_config"]))
    best_path = unused_path(folder / "best_config.yaml")
    best_path.write_text(_best_config_yaml(full_config, best_overall["best_config"]))
    json_path = unused_path(folder / "tune_summary.json")
    json_path.write_text(to_json(summary))
    table = tune_table(summary)
    md_path = unused_path(folder / "tune_summary.md")
    md_path.write_text(table)
    figure = plots.tune_scores_figure([t for s in searches for t in s["trials"]], keys, SCORE, f"{name}: trial scores")
    png_path = plots.save_png(figure, unused_path(folder / "tune_scores.png"))
    print("\n" + table, flush=True)
    print(f"qlit tune: wrote {json_path}, {md_path}, {png_path} and {best_path}", flush=True)
    return summary
