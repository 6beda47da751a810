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
    outer_<k>/<trial>/inner_<j>/    TensorBoard: one run per trial and inner fold; in the HParams tab its tuned
                                    keys, trial, outer and inner fold, the trial's score and the fold's best epoch
    ray/outer_<k>/, ray/all/        Ray Tune's own results (what --resume restores; no TensorBoard copies)
    ray_state.json                  SHA-256 of every file under ray/ when qlit last recorded it, keyed (HMAC)
    tuned/fold_<k>/, untuned/fold_<k>/   the final trainings on outer fold k, tested on its test rows
    tune_summary.json, tune_summary.md, tune_scores.png, best_config.yaml, best_config_fold_<k>.yaml
"""

from __future__ import annotations

import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jsonargparse import Namespace

from qlit.callbacks.safety import TrainingInterrupted
from qlit.commands import TuneOptions
from qlit.engine import runner
from qlit.errors import QlitError
from qlit.evaluation import plots, tune_trials
from qlit.evaluation.baselines import LOGISTIC_INNER_C_MODEL, logistic_regression_inner_c
from qlit.evaluation.cv import FOLD_KEYS, data_module, given_split, prepared, with_test_rows
from qlit.evaluation.folds import FoldJob, run_fold
from qlit.evaluation.report import short_config, to_json, tune_table
from qlit.evaluation.space import apply, apply_to_dict, read_space
from qlit.evaluation.stats import CI_NOTE, METRIC, STD_NOTE, paired, with_stats
from qlit.evaluation.tune_state import prune_states, record_state, verify_state
from qlit.evaluation.tune_trials import SCORE, TrialSetup, search_name, trial_records
from qlit.io.checkpoints import load_checkpoint
from qlit.io.provenance import provenance
from qlit.io.runs import claim_version, release_if_empty, unused_path

# Options that say where trials run, not what they are: a resumed sweep may change them.
WHERE = ("resume", "workers", "address", "gpus_per_trial")
# the split identity fields that make two trainings score the same rows with the same labels
SAME_TASK = ("data_sha256", "train_sha256", "val_sha256", "test_sha256")


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


def _best_config_yaml(
    full_config: str, overrides: dict[str, Any], fold: int, tuned_on: dict[str, Any], note: str
) -> str:
    """A tuned config as ``qlit fit --config`` runs it: its fold, and where its search ran (``data.tuned_on``)."""
    config = yaml.safe_load(full_config).get("tune", {})
    for key in [k for k in config if k not in FOLD_KEYS]:
        config.pop(key)
    config = apply_to_dict(config, overrides)
    config["data"]["init_args"]["fold"] = fold
    config["data"]["init_args"]["tuned_on"] = tuned_on
    header = "".join(f"# {line}\n" for line in note.splitlines())
    return header + yaml.safe_dump(config, sort_keys=False, width=120, default_flow_style=None)


def tuned_on_record(config: Namespace, outer_fold: int | None) -> dict[str, Any]:
    """``data.tuned_on`` of a config a search chose: the data's SHA-256, the outer fold and the rows it saw."""
    fold = data_module(_at_fold(config, 0 if outer_fold is None else outer_fold))
    rows: str | list[int] = "all"
    if outer_fold is None and given_split(config):  # a search over all rows saw the given training rows only
        fold = data_module(with_test_rows(config, "given"))
    if outer_fold is not None or given_split(config):
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


def run_tune(config: Namespace, full_config: str, options: TuneOptions) -> dict[str, Any]:
    """Run ``qlit tune``; returns the summary written to ``tune_summary.json``."""
    options.check()
    space = read_space(options.space, config)
    tune_trials.sampler(space)
    config, logger = prepared(config, "qlit tune")
    if given_split(config):  # every fold, outer and inner, is cut from the given training rows only
        config = with_test_rows(config, "fold")
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
        return _run_tune(config, full_config, options, space, logger, folder, outer_folds, max_epochs)
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
        setup = TrialSetup(config, k, options.inner_folds if k is not None else num_folds, name, os.getcwd())
        tuner = tune_trials.tuner(setup, space, options, storage, max_epochs, seed)
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
        prune_states(storage / search_name(k))
        record_state(folder, search_name(k))
        trials = trial_records(results, keys, setup.inner_folds)
        for t in (t for t in trials if t["status"] == "failed"):  # one line each; Ray's traceback is not shown
            error = t["error"].removeprefix(f"{QlitError.__module__}.{QlitError.__name__}: ")
            print(f"qlit tune: {where}: trial {t['trial_id'] or t['trial']} with {short_config(t['config'])} failed: "
                  f"{error}", flush=True)
        complete = [t for t in trials if t[SCORE] is not None and math.isfinite(t[SCORE])]
        if not complete:
            reasons = "; ".join(sorted({t.get("error", t["status"]) for t in trials}))[:300]
            raise QlitError(f"{where}: no trial of {options.num_samples} completed ({reasons})")
        best = min(complete, key=lambda t: t[SCORE])
        search = {"fold": k, "trials": trials, "best_config": best["config"], "best_score": best[SCORE]}
        search["tuned_on"] = tuned_on_record(config, k)
        if k is None:
            final = search
        else:
            searches.append(search)
        print(
            f"qlit tune: {where}: best of {len(trials)} trials {SCORE} {best[SCORE]:.4f} with "
            + short_config(best["config"]),
            flush=True,
        )

    jobs: list[tuple[str, FoldJob]] = []
    for search in searches:
        k = search["fold"]
        tuned = apply(config, search["best_config"])
        tuned.data.init_args.tuned_on = search["tuned_on"]  # its checkpoint records where its config was chosen
        jobs.append(("tuned", FoldJob(tuned, k, f"{name}/tuned", "tuned hybrid")))
        jobs.append(
            (
                "untuned",
                FoldJob(config, k, f"{name}/untuned", "untuned hybrid", baselines=True),
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
        "provenance": provenance({"data_module": config.data.class_path, "data_sha256": searches[0]["data_sha256"]}),
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
        [{**t, "outer_fold": s["fold"]} for s in searches for t in s["trials"]],
        keys,
        SCORE,
        f"{name}: trial scores (outer folds)",
        space=space,
    )
    png_path = plots.save_png(figure, unused_path(folder / "tune_scores.png"))
    print("\n" + table, flush=True)
    print(f"qlit tune: wrote {json_path}, {md_path}, {png_path} and {best_path}", flush=True)
    return summary
