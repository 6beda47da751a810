"""``qlit tune``: Ray Tune over any config key, scored on validation rows only, with nested cross-validation.

For each outer fold k (every fold with ``nested``, else only ``data.fold``), a Ray Tune search runs on
that fold's non-test rows: a trial trains its sampled config on each of ``inner_folds`` inner folds
(`KFoldDataModule.inner_split`) and is scored by the mean over them of its best validation loss. The
outer test rows are in no split of any trial. The best trial's config is then trained on the outer fold
as ``qlit cv`` trains a fold, and tested once on its test rows, beside the untuned config and logistic
regression (its C chosen on the same inner folds) on the same fold: the honest estimate of "tune, then train".

With ``nested``, one more search runs over all rows (a trial trains on every fold's training rows and is
scored on their validation rows): its best config is ``best_config.yaml``, the config to train the final
model with, whose honest estimate is the nested one. Every tuned config records where it was tuned
(``data.tuned_on``), and the split guard refuses to score the rows its search saw.

``--resume`` restores Ray Tune's pickled state only when it is exactly what this qlit recorded after Ray
saved it (`record_state`, `verify_state`): a file planted in or changed in the run folder is refused unread.

Layout, below ``lightning_logs/<experiment>/tune_<n>/``::

    tune_config.yaml                the command's config and options
    outer_<k>/<trial>/inner_<j>/    TensorBoard of every trial's inner folds
    ray/outer_<k>/, ray/all/        Ray Tune's own results (what --resume restores)
    ray_state.json                  SHA-256 of every file under ray/ when qlit last recorded it, keyed (HMAC)
    tuned/fold_<k>/, untuned/fold_<k>/   the final trainings on outer fold k, tested on its test rows
    tune_summary.json, tune_summary.md, tune_scores.png, best_config.yaml, best_config_fold_<k>.yaml
"""

from __future__ import annotations

import hashlib
import hmac
import json
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
from qlit.evaluation.baselines import BASELINES, C_GRID, LOGISTIC_INNER_C_MODEL, logistic_regression_inner_c
from qlit.evaluation.cv import data_module, prepared
from qlit.evaluation.folds import FoldJob, build_cli, class_name, run_fold, tensorboard_args
from qlit.evaluation.report import to_json
from qlit.evaluation.space import apply, apply_to_dict, ray_space, read_space
from qlit.evaluation.stats import CI_NOTE, METRIC, STD_NOTE, paired, shown, with_stats
from qlit.io.checkpoints import load_checkpoint
from qlit.io.runs import claim_version, release_if_empty, unused_path

SCORE = "inner_val_loss_mean"
# Options that say where trials run, not what they are: a resumed sweep may change them.
WHERE = ("resume", "workers", "address", "gpus_per_trial")
# A trial's callbacks: the ones that pick, save or ship checkpoints have nothing to do in a trial, and
# EarlyStopping would make trials of one search report different epochs at the same iteration (ASHA compares those).
TRIAL_DROPS = ("RunCheckpoint", "ModelCheckpoint", "EarlyStopping", "Int8Quantization")
MANIFEST = "ray_state.json"
KEY_FILE = "tune_state.key"
# the split identity fields that make two trainings score the same rows with the same labels
SAME_TASK = ("data_sha256", "train_sha256", "val_sha256", "test_sha256")


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
    outer_fold: int | None  # None: the search over all rows, whose "inner folds" are the data module's folds
    inner_folds: int
    name: str
    cwd: str
    cli_class: type | None = None


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


def search_name(outer_fold: int | None) -> str:
    """The folder of one search: ``outer_<k>``, or ``all`` for the search over all rows."""
    return "all" if outer_fold is None else f"outer_{outer_fold}"


def _state_key() -> bytes:
    """This user's secret key for ``ray_state.json``, outside every run folder (created on first use, mode 600).

    A manifest in the run folder alone would not do: whoever can plant a pickle there can rewrite its hash too.
    """
    folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "qlit"
    path = folder / KEY_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
    key = path.read_bytes()
    if len(key) < 32:
        raise QlitError(f"{path}: qlit's key for Ray Tune state is damaged; delete it (unfinished sweeps then restart)")
    return key


def _files(folder: Path) -> dict[str, str]:
    """Every entry below ``folder``: its SHA-256, or ``link``/``other`` for what is not a plain file."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[name] = "link"
        elif path.is_file():
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif not path.is_dir():
            found[name] = "other"
    return found


def _signed(searches: dict[str, Any]) -> str:
    text = json.dumps(searches, sort_keys=True)
    return hmac.new(_state_key(), text.encode(), hashlib.sha256).hexdigest()


def _manifest(folder: Path) -> dict[str, Any]:
    """The searches ``ray_state.json`` records, if its key-signed digest holds (else none)."""
    try:
        content = json.loads((folder / MANIFEST).read_text())
        searches = content["searches"]
        if isinstance(searches, dict) and hmac.compare_digest(str(content["hmac"]), _signed(searches)):
            return searches
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return {}


def record_state(folder: Path, name: str) -> None:
    """Record the SHA-256 of every file Ray Tune left in ``ray/<name>``, after its last save in this run."""
    searches = _manifest(folder)
    searches[name] = _files(folder / "ray" / name)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"searches": searches, "hmac": _signed(searches)}, indent=1, sort_keys=True))
    tmp.replace(folder / MANIFEST)


def verify_state(folder: Path, name: str) -> None:
    """Refuse to restore ``ray/<name>`` unless every file there is exactly one qlit recorded.

    Ray Tune's state is pickled (``tuner.pkl``, searcher and callback states, cloudpickled values inside its
    JSON); unpickling a file can run any code, so qlit restores only files it recorded itself.

    Raises:
        QlitError: one line naming the first file that differs; nothing was read as a pickle.
    """
    state = folder / "ray" / name
    recorded = _manifest(folder).get(name)
    if recorded is None:
        raise QlitError(
            f"--resume true: {state} holds Ray Tune state that qlit never recorded (the sweep was killed, e.g. "
            "kill -9, before it could record it, or the files were placed there); qlit does not unpickle "
            "unverified files: start the sweep again without --resume"
        )
    found = _files(state)
    for file in sorted(set(found) | set(recorded)):
        if found.get(file) != recorded.get(file):
            what = "is not one qlit wrote" if file not in recorded else "is missing" if file not in found else (
                "changed since qlit recorded it"
            )
            raise QlitError(
                f"--resume true: {state / file} {what} (or the sweep was killed before qlit recorded Ray's last "
                "save); qlit does not unpickle unverified files: start the sweep again without --resume"
            )


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
    path = storage / search_name(setup.outer_fold)
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
        "logistic_regression": "logistic regression (C by inner folds)",
        "majority_class": BASELINES["majority_class"],
    }
    lines = [
        f"## Tuning: {summary['experiment']} ({'nested, ' if summary['nested'] else ''}{len(summary['outer_folds'])} "
        f"outer fold{'s' * (len(summary['outer_folds']) != 1)}, {summary['num_samples']} samples each, "
        f"{summary['inner_folds']} inner folds)",
        "",
        (
            f"`{METRIC}` on each outer test fold, never seen by the search; a trial's score is its mean best "
            "`val_loss` over the inner folds of the outer fold's training rows. Logistic regression chooses its C "
            f"(of {', '.join(map(str, C_GRID))}) by log loss on the same inner folds."
        ),
        "",
        "| outer fold | n_test | best config (by inner val_loss) | " + " | ".join(names.values()) + " |",
        "|---:|---:|---|" + "---:|" * len(names),
    ]
    for i, outer in enumerate(summary["outer_folds"]):
        chosen = ", ".join(f"{k}={_short(v)}" for k, v in outer["best_config"].items())
        cells = [f"{summary[m]['folds'][i][METRIC]:.3f}" for m in names]
        lines.append(f"| {outer['fold']} | {outer['n_test']} | {chosen} | " + " | ".join(cells) + " |")
    means = [f"**{summary[m][f'{METRIC}_mean']:.3f} ± {shown(summary[m][f'{METRIC}_std'])}**" for m in names]
    cis = [
        "n/a" if summary[m][f"{METRIC}_ci95"] is None else "{:.3f} – {:.3f}".format(*summary[m][f"{METRIC}_ci95"])
        for m in names
    ]
    lines += [
        "| **mean ± sd** | | | " + " | ".join(means) + " |",
        "| 95% CI of the mean | | | " + " | ".join(cis) + " |",
    ]
    if len(summary["outer_folds"]) > 1:
        lines.append("")
        for key, d in summary["paired_differences"].items():
            lines.append(
                f"- {key.replace('_minus_', ' − ').replace('_', ' ')}: {d['mean']:+.3f} "
                f"(95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}, paired over outer folds)"
            )
    lines += ["", f"sd: {STD_NOTE}. {CI_NOTE}; n/a with one outer fold.", "", summary["best_config_note"], ""]
    counts: dict[str, int] = {}
    for outer in summary["outer_folds"]:
        for t in outer["trials"]:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
    lines.append("Trials: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + ".")
    lines.append("")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _best_config_yaml(
    full_config: str, overrides: dict[str, Any], fold: int, tuned_on: dict[str, Any], note: str
) -> str:
    """A tuned config as ``qlit fit --config`` runs it: its fold, and where its search ran (``data.tuned_on``)."""
    config = yaml.safe_load(full_config).get("tune", {})
    for key in [k for k in config if k not in ("seed_everything", "trainer", "model", "data")]:
        config.pop(key)
    config = apply_to_dict(config, overrides)
    config["data"]["init_args"]["fold"] = fold
    config["data"]["init_args"]["tuned_on"] = tuned_on
    header = "".join(f"# {line}\n" for line in note.splitlines())
    return header + yaml.safe_dump(config, sort_keys=False, width=120, default_flow_style=None)


def provenance(config: Namespace, outer_fold: int | None) -> dict[str, Any]:
    """``data.tuned_on`` of a config a search chose: the data's SHA-256, the outer fold and the rows it saw."""
    fold = data_module(_at_fold(config, 0 if outer_fold is None else outer_fold))
    rows: str | list[int] = "all"
    if outer_fold is not None:
        rows = sorted(int(r) for r in np.concatenate([fold.indices["train"], fold.indices["val"]]))
    return {"data_sha256": fold.data_sha256(), "outer_fold": outer_fold, "rows": rows}


def _at_fold(config: Namespace, fold: int, inner_folds: int | None = None, inner_fold: int = 0) -> Namespace:
    config = config.clone()
    config.data.init_args.fold = fold
    config.data.init_args.inner_folds = inner_folds
    config.data.init_args.inner_fold = inner_fold
    return config


def tuned_logistic_regression(config: Namespace, fold: int, inner_folds: int) -> dict[str, Any]:
    """Logistic regression on outer ``fold``, its C chosen on the inner folds the hybrid's search used."""
    outer = data_module(_at_fold(config, fold))
    inner = [data_module(_at_fold(config, fold, inner_folds, j)) for j in range(inner_folds)]
    return {"fold": fold, **logistic_regression_inner_c(outer, inner)}


def split_identity_of(checkpoint: str) -> dict[str, Any]:
    """The split identity a fold's best checkpoint recorded (data, labels and rows), read as plain values."""
    state = load_checkpoint(Path(checkpoint))
    for value in state.values():
        if isinstance(value, dict) and isinstance(value.get("split"), dict):
            return value["split"]
    raise QlitError(f"{checkpoint} records no split identity")


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
    if resumed is not None and (resumed / "ray").is_dir():
        for search in sorted(p.name for p in (resumed / "ray").iterdir()):
            verify_state(resumed, search)  # refused in one line before Ray starts, nothing unpickled
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
    num_folds = int(config.data.init_args.num_folds)
    searches, final = [], None
    # with nested, a last search over all rows (its inner folds: the data module's folds) picks best_config.yaml
    for k in [*outer_folds, *([None] if options.nested else [])]:
        where = f"outer fold {k}" if k is not None else f"all rows ({num_folds} folds)"
        setup = TrialSetup(config, k, options.inner_folds if k is not None else num_folds, name, os.getcwd(), cli_class)
        tuner = _tuner(setup, space, options, storage, max_epochs, seed)
        try:
            results = tuner.fit()
        finally:  # after Ray's last save of this search in this run (done, stopped, or failed)
            if (storage / search_name(k)).is_dir():
                record_state(folder, search_name(k))
        if results.num_terminated + results.num_errors < len(results):  # Ray Tune stopped on SIGINT/SIGTERM
            raise TrainingInterrupted(
                signal.SIGINT,
                f"tuning interrupted in {where}; the finished trials are saved: go on with the same "
                "command plus --resume true",
            )
        _prune_states(storage / search_name(k))
        record_state(folder, search_name(k))
        trials = _trials(results, keys, setup.inner_folds)
        complete = [t for t in trials if t[SCORE] is not None and math.isfinite(t[SCORE])]
        if not complete:
            reasons = "; ".join(sorted({t.get("error", t["status"]) for t in trials}))[:300]
            raise QlitError(f"{where}: no trial of {options.num_samples} completed ({reasons})")
        best = min(complete, key=lambda t: t[SCORE])
        search = {"fold": k, "trials": trials, "best_config": best["config"], "best_score": best[SCORE]}
        search["tuned_on"] = provenance(config, k)
        if k is None:
            final = search
        else:
            searches.append(search)
        print(
            f"qlit tune: {where}: best of {len(trials)} trials {SCORE} {best[SCORE]:.4f} with "
            + ", ".join(f"{key}={_short(v)}" for key, v in best["config"].items()),
            flush=True,
        )

    jobs: list[tuple[str, FoldJob]] = []
    for search in searches:
        k = search["fold"]
        tuned = apply(config, search["best_config"])
        tuned.data.init_args.tuned_on = search["tuned_on"]  # its checkpoint records where its config was chosen
        jobs.append(("tuned", FoldJob(tuned, k, f"{name}/tuned", "tuned hybrid", cli_class=cli_class)))
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
        identities = [split_identity_of(r["record"]["best_checkpoint"]) for r in (tuned, untuned)]
        differ = [key for key in SAME_TASK if identities[0].get(key) != identities[1].get(key)]
        if differ or tuned["test_indices"] != untuned["test_indices"]:
            raise RuntimeError(
                f"outer fold {k}: the tuned and untuned models ran on different tasks ({', '.join(differ) or 'rows'})"
            )
        search["data_sha256"] = identities[0]["data_sha256"]
        logistic = tuned_logistic_regression(config, k, options.inner_folds)
        logistic["fixed_C1_" + METRIC] = untuned["logistic_regression"][METRIC]  # qlit cv's reference, C = 1
        per_model["tuned"].append(tuned["record"])
        per_model["untuned"].append(untuned["record"])
        per_model["logistic_regression"].append(logistic)
        per_model["majority_class"].append(untuned["majority_class"])
        search["n_test"] = tuned["record"]["n_test"]
        print(
            f"qlit tune: outer fold {k}: {METRIC} tuned {tuned['record'][METRIC]:.3f} | untuned "
            f"{untuned['record'][METRIC]:.3f} | logistic regression (C={logistic['C']:g}) {logistic[METRIC]:.3f} | "
            f"majority class {untuned['majority_class'][METRIC]:.3f}",
            flush=True,
        )
    chosen = final or searches[0]  # without nested, the one search: its outer fold's test rows stay unseen
    estimate = (
        f"tuned {METRIC} {with_stats(per_model['tuned'])[f'{METRIC}_mean']:.3f} over {len(searches)} outer fold"
        f"{'s' * (len(searches) != 1)} in tune_summary.json"
    )
    if final is not None:
        note = (
            f"best_config.yaml: the best of a search over all rows ({num_folds} folds as inner folds), the config to "
            f"train the final model with. Its search saw every row, so no test fold of these data scores it "
            f"honestly (qlit test and qlit cv refuse to): the honest estimate of 'tune, then train' is the nested "
            f"one, {estimate}."
        )
    else:
        note = (
            f"best_config.yaml: the best of the search in outer fold {chosen['fold']} (--nested false), which saw "
            f"its non-test rows only; its test rows score it ({estimate}, one fold: no spread)."
        )
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
        "logistic_regression_model": LOGISTIC_INNER_C_MODEL,
        "final_search": final,
        "best_config": chosen["best_config"],
        "best_config_tuned_on": chosen["tuned_on"],
        "best_config_note": note,
    }
    if len(searches) > 1:
        summary["paired_differences"] = {
            f"tuned_minus_{m}": paired(per_model["tuned"], per_model[m])
            for m in ("untuned", "logistic_regression", "majority_class")
        }
    fold = int(config.data.init_args.fold)
    for search in searches:
        k = search["fold"]
        path = unused_path(folder / f"best_config_fold_{k}.yaml")
        fold_note = (
            f"best_config_fold_{k}.yaml: the best config of the search in outer fold {k}, which trained and "
            f"validated on that fold's non-test rows only (data.tuned_on); test it on fold {k} alone."
        )
        path.write_text(_best_config_yaml(full_config, search["best_config"], k, search["tuned_on"], fold_note))
    best_path = unused_path(folder / "best_config.yaml")
    best_fold = fold if chosen["fold"] is None else chosen["fold"]
    best_path.write_text(_best_config_yaml(full_config, chosen["best_config"], best_fold, chosen["tuned_on"], note))
    json_path = unused_path(folder / "tune_summary.json")
    json_path.write_text(to_json(summary))
    table = tune_table(summary)
    md_path = unused_path(folder / "tune_summary.md")
    md_path.write_text(table)
    figure = plots.tune_scores_figure(
        [t for s in searches for t in s["trials"]], keys, SCORE, f"{name}: trial scores (outer folds)"
    )
    png_path = plots.save_png(figure, unused_path(folder / "tune_scores.png"))
    print("\n" + table, flush=True)
    print(f"qlit tune: wrote {json_path}, {md_path}, {png_path} and {best_path}", flush=True)
    return summary
