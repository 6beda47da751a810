"""``qlit cv``: k-fold cross-validation of the hybrid model beside three classical references.

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

The folds are `FoldJob`s handed to `qlit.engine.runner.run_jobs`: serial by default, ``--workers N`` at a
time in processes forked from the command (Ray tasks where it cannot fork), Ray tasks on a cluster with
``--address``. The numbers are the same either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace

from qlit.commands import CVOptions
from qlit.engine.parser import class_of
from qlit.engine.runner import connect, forks_locally, needs_ray, run_jobs, shutdown
from qlit.errors import QlitError
from qlit.evaluation.baselines import BASELINES
from qlit.evaluation.cv_resume import (
    check_same_settings,
    finished_result,
    fold_selection,
    result_path,
    resumable_folder,
    save_result,
    set_aside,
)
from qlit.evaluation.cv_summary import given_test_summary, summarize, trading_summary
from qlit.evaluation.folds import FoldJob, check_fold_config, run_fold, tensorboard_args
from qlit.evaluation.report import write_cv_report
from qlit.evaluation.stats import METRIC
from qlit.io.runs import claim_file

FOLD_KEYS = ("seed_everything", "trainer", "model", "data")


def _taken(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier cv run (also one written before cv runs claimed folders)."""
    return folder.exists() and (
        any(folder.glob("cv_summary*.json"))
        or any(folder.glob("cv_config*.yaml"))
        or any(folder.glob("fold_*"))
        or any(folder.glob("repeat_*"))
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


def prepared(config: Namespace, command: str = "qlit cv") -> tuple[Namespace, Namespace]:
    """A copy of the command's config, checked for training fold by fold, and its TensorBoard logger args."""
    config = config.clone()
    for key in [key for key in vars(config) if key not in FOLD_KEYS]:
        config.pop(key)  # the command's own options (--workers, --space, ...) are not part of a fold's config
    check_fold_config(config, command)
    logger = tensorboard_args(config)
    if not logger.get("name"):
        raise QlitError(
            f"{command} needs trainer.logger.init_args.name, the experiment folder its folds go in; "
            f"got {logger.get('name')!r}"
        )
    return config, logger


def data_module(config: Namespace) -> Any:
    """The config's data module, built from its ``class_path`` and ``init_args`` and set up for fitting."""
    from lightning.pytorch.cli import instantiate_class

    init = config.data.get("init_args") or Namespace()
    module = instantiate_class((), {"class_path": config.data.class_path, "init_args": init.as_dict()})
    module.setup("fit")
    return module


def refuse_tuned_here(config: Namespace, command: str = "qlit cv") -> None:
    """Refuse to cross-validate a config that ``qlit tune`` chose on these same data.

    Its search trained and validated on rows that every set of test folds of these data covers, so each
    fold's test score would be optimistic; the honest estimate of a tuned config is tune's nested one.

    Raises:
        QlitError: one line naming the search.
    """
    tuned_on = config.data.get("init_args", Namespace()).get("tuned_on")
    if not tuned_on:
        return
    tuned_on = tuned_on.as_dict() if isinstance(tuned_on, Namespace) else dict(tuned_on)
    if tuned_on.get("data_sha256") != data_module(config).data_sha256():
        return  # tuned on other data: these rows were not searched
    outer = tuned_on.get("outer_fold")
    search = f"outer fold {outer}'s non-test rows" if outer is not None else "all rows"
    raise QlitError(
        f"{command}: this config was chosen by qlit tune on these data (data.tuned_on: {search}), so every set of "
        "test folds holds rows its search trained or validated on; the honest estimate is the nested one in "
        "tune_summary.json (tuned test_acc), or tune it again inside each fold with qlit tune"
    )


def twin_of(config: Namespace) -> Namespace:
    """The same config with the circuit replaced by its classical twin."""
    twin = config.clone()
    twin.model.core = "classical"
    return twin


def fold_line(fit: tuple[int, int], num_folds: int, repeats: int, results: dict[str, dict[str, Any]]) -> str:
    """The one line printed per finished fold: every model's accuracy on its test rows."""
    repeat, k = fit
    hybrid = results["hybrid"]
    parts = [
        f"{METRIC} hybrid {hybrid['record'][METRIC]:.3f}",
        f"classical twin {results['twin']['record'][METRIC]:.3f}",
    ]
    parts += [f"{BASELINES[b]} {hybrid[b][METRIC]:.3f}" for b in BASELINES if b in hybrid]
    where = f"repeat {repeat + 1}/{repeats}, " if repeats > 1 else ""
    return f"{where}fold {k + 1}/{num_folds} (n_test {hybrid['record']['n_test']}): " + " | ".join(parts)


def cross_validate(config: Namespace, full_config: str, options: CVOptions | None = None) -> dict[str, Any]:
    """Run ``qlit cv``: every fold of the configured data module, the hybrid and its baselines.

    Args:
        config: The parsed ``qlit cv`` config (its ``cv`` namespace).
        full_config: The whole command's config as YAML (``parser.dump``), saved as ``cv_config.yaml``.
        options: Where the folds run (serial, local Ray, a cluster).

    Returns:
        The summary written to ``cv_summary.json``.
    """
    options = options or CVOptions()
    config, logger = prepared(config)
    refuse_tuned_here(config)
    selected = fold_selection(options.folds, int(config.data.init_args.num_folds))
    resumed = resumable_folder(logger.save_dir, logger.name) if options.resume else None
    # Ray first: an unreachable --address or RAY_ADDRESS is refused before the cv folder is claimed
    ray, started = None, False
    if needs_ray(options.workers, options.address, options.gpus_per_fold):
        option = "--address" if options.address else "--workers"
        ray, started = connect(options.workers, options.address, option)
    try:
        return _cross_validate(config, logger, full_config, options, selected, resumed)
    finally:
        if started:
            shutdown(ray)


def at_repeat(config: Namespace, repeat: int) -> Namespace:
    """The config of repeat ``repeat``: split seed and model seed moved on by ``repeat`` (repeat 0 is ``config``)."""
    config = config.clone()
    config.data.init_args.split_seed = int(config.data.init_args.get("split_seed") or 0) + repeat
    seed = config.get("seed_everything")
    if isinstance(seed, int) and not isinstance(seed, bool):
        config.seed_everything = seed + repeat
    return config


def given_split(config: Namespace) -> bool:
    """Whether the config's data come with their own test rows (a table's ``split_column`` or ``test_file``)."""
    init = config.data.get("init_args") or Namespace()
    return bool(init.get("split_column") or init.get("test_file"))


def with_test_rows(config: Namespace, test_rows: str) -> Namespace:
    """A copy of ``config`` whose table tests on its given test rows (``given``) or on k-fold test folds (``fold``)."""
    config = config.clone()
    config.data.init_args.test_rows = test_rows
    return config


def _cross_validate(
    config: Namespace,
    logger: Namespace,
    full_config: str,
    options: CVOptions,
    selected: list[int],
    resumed: str | None,
) -> dict[str, Any]:
    num_folds = int(config.data.init_args.num_folds)
    saved = yaml.safe_load(full_config).get("cv", {})
    saved.pop("config", None)
    if resumed is not None:
        name = resumed
        check_same_settings(Path(logger.save_dir) / name / "cv_config.yaml", saved)
    else:
        name = claim_cv_folder(logger.save_dir, logger.name)
        (Path(logger.save_dir) / name / "cv_config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    cv_dir = Path(logger.save_dir) / name
    where = f", {options.workers} at a time on Ray" if options.workers > 1 else ""
    if forks_locally(options.workers, options.address, options.gpus_per_fold):
        where = f", {options.workers} at a time in processes forked from this one"
    where = f", on the Ray cluster at {options.address}" if options.address else where
    repeats = f" × {options.repeats} repeats" if options.repeats > 1 else ""
    given = given_split(config)
    inside = " of the given training rows, then the given test rows" if given else ""
    which = f"{num_folds} folds"
    if len(selected) < num_folds:
        which = f"folds {', '.join(map(str, selected))} of {num_folds}"
    print(f"qlit cv: {which}{inside}{repeats}{where}, logging to {cv_dir}", flush=True)

    tuned = options.tuned_baselines
    jobs: list[tuple[str, Any, FoldJob]] = []
    for r in range(options.repeats):
        repeat = at_repeat(with_test_rows(config, "fold") if given else config, r)
        folder = name if options.repeats == 1 else f"{name}/repeat_{r}"
        for k in selected:
            jobs.append(("hybrid", (r, k), FoldJob(repeat, k, folder, "hybrid", baselines=True, tuned_baselines=tuned)))
            jobs.append(("twin", (r, k), FoldJob(twin_of(repeat), k, f"{folder}/classical_twin", "classical twin")))
    if given:  # one refit on all the training rows, scored once on the given test rows
        refit = with_test_rows(config, "given")
        jobs.append(("hybrid", "given", FoldJob(refit, 0, f"{name}/given_test", "hybrid", True, tuned)))
        jobs.append(
            ("twin", "given", FoldJob(twin_of(refit), 0, f"{name}/given_test/classical_twin", "classical twin"))
        )
    per_fit: dict[Any, dict[str, dict[str, Any]]] = {fit: {} for _, fit, _ in jobs}
    paths = [result_path(logger.save_dir, job.name, job.fold) for _, _, job in jobs]
    kept = {i: finished_result(path) for i, path in enumerate(paths)} if resumed is not None else {}
    kept = {i: result for i, result in kept.items() if result is not None}
    pending = [i for i in range(len(jobs)) if i not in kept]
    if resumed is not None:
        for i in pending:
            set_aside(paths[i].parent)  # a killed training's files stay, under another name
        print(f"qlit cv: resuming: {len(kept)} of {len(jobs)} trainings finished, {len(pending)} to run", flush=True)

    def collect(i: int, result: dict[str, Any]) -> None:
        kind, fit, _ = jobs[i]
        per_fit[fit][kind] = result
        if len(per_fit[fit]) == 2 and fit != "given":
            print(f"qlit cv: {fold_line(fit, num_folds, options.repeats, per_fit[fit])}", flush=True)

    for i, result in kept.items():
        collect(i, result)
    finished = run_jobs(
        run_fold, [jobs[i][2] for i in pending], options.workers, options.address, options.gpus_per_fold, "--workers"
    )
    for j, result in finished:
        save_result(paths[pending[j]], result)
        collect(pending[j], result)

    refit_results = per_fit.pop("given", None)
    summary, oof = summarize(name, cv_dir, config, per_fit, tuned)
    if refit_results is not None:
        summary["given_test"] = given_test_summary(refit_results, list(summary["baselines"]))
    if hasattr(class_of(config.data.class_path), "next_day_returns"):
        trading = trading_summary(data_module(config), per_fit, oof, options.cost_bps)
        summary["strategy"] = {k: v for k, v in trading.items() if k != "curves"}
        summary["strategy_curves"] = trading["curves"]
    paths = write_cv_report(cv_dir, summary, oof)
    print(f"qlit cv: wrote {', '.join(map(str, paths[:-1]))} and {paths[-1]}", flush=True)
    return summary
