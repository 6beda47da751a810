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

The folds are `FoldJob`s handed to `qlit.engine.runner.run_jobs`: serial by default, Ray tasks with
``--workers N`` or ``--address``. The numbers are the same either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jsonargparse import Namespace

from qlit.commands import CVOptions
from qlit.engine.runner import connect, needs_ray, run_jobs, shutdown
from qlit.errors import QlitError
from qlit.evaluation.baselines import BASELINES, LOGISTIC_MODEL, MAJORITY_MODEL, TWIN_MODEL
from qlit.evaluation.folds import FoldJob, check_fold_config, run_fold, tensorboard_args
from qlit.evaluation.report import write_cv_report
from qlit.evaluation.stats import CI_NOTE, METRIC, STD_NOTE, paired, with_stats
from qlit.io.provenance import provenance
from qlit.io.runs import claim_file

FOLD_KEYS = ("seed_everything", "trainer", "model", "data")


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


def fold_line(k: int, num_folds: int, results: dict[str, dict[str, Any]]) -> str:
    """The one line printed per finished fold."""
    hybrid = results["hybrid"]["record"]
    parts = [f"{METRIC} hybrid {hybrid[METRIC]:.3f}", f"classical twin {results['twin']['record'][METRIC]:.3f}"]
    parts += [f"{BASELINES[b]} {results['hybrid'][b][METRIC]:.3f}" for b in ("logistic_regression", "majority_class")]
    return f"fold {k + 1}/{num_folds} (n_test {hybrid['n_test']}): " + " | ".join(parts)


def _data_identity(config: Namespace, folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The data every fold was cut from: its module, settings and one SHA-256 (checked to be the same for all)."""
    hashes = {record["data_sha256"] for record in folds}
    if len(hashes) != 1:
        raise RuntimeError(f"the folds were trained on different data ({len(hashes)} different hashes)")
    settings = {k: v for k, v in vars(config.data.init_args).items() if isinstance(v, (str, int, float, bool, list))}
    return {"data_module": config.data.class_path, "data_sha256": hashes.pop(), "settings": settings}


def summarize(name: str, cv_dir: Path, config: Namespace, per_fold: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The ``cv_summary.json`` content from each fold's hybrid and twin results."""
    hybrid, twin, logistic, majority = [], [], [], []
    for k, results in enumerate(per_fold):
        h, t = results["hybrid"], results["twin"]
        if h["test_indices"] != t["test_indices"]:
            raise RuntimeError(f"fold {k}: the classical twin was tested on other rows than the hybrid")
        record = {**h["record"], "test_indices": h["test_indices"]}
        record["test_base_rate"] = h["majority_class"]["test_base_rate"]
        hybrid.append(record)
        twin.append(t["record"])
        logistic.append(h["logistic_regression"])
        majority.append(h["majority_class"])
    return {
        "metric": METRIC,
        "experiment": name,
        "cv_dir": str(cv_dir),
        "num_folds": len(per_fold),
        "data": config.data.class_path,
        "class_names": per_fold[0]["hybrid"]["class_names"],
        "seed_everything": config.get("seed_everything"),
        "checkpoint": per_fold[0]["hybrid"]["checkpoint"],
        "provenance": provenance(_data_identity(config, hybrid)),
        "std": STD_NOTE,
        "ci95_method": CI_NOTE,
        **with_stats(hybrid),
        "test_loss_mean": float(np.mean([r["test_loss"] for r in hybrid])),
        "baselines": {
            "classical_twin": {**with_stats(twin), "model": TWIN_MODEL},
            "logistic_regression": {**with_stats(logistic), "model": LOGISTIC_MODEL},
            "majority_class": {**with_stats(majority), "model": MAJORITY_MODEL},
        },
        "paired_differences": {
            f"hybrid_minus_{b}": paired(hybrid, records) for b, records in zip(BASELINES, (twin, logistic, majority))
        },
    }


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
    # Ray first: an unreachable --address or RAY_ADDRESS is refused before the cv folder is claimed
    ray, started = None, False
    if needs_ray(options.workers, options.address, options.gpus_per_fold):
        option = "--address" if options.address else "--workers"
        ray, started = connect(options.workers, options.address, option)
    try:
        return _cross_validate(config, logger, full_config, options)
    finally:
        if started:
            shutdown(ray)


def _cross_validate(config: Namespace, logger: Namespace, full_config: str, options: CVOptions) -> dict[str, Any]:
    num_folds = int(config.data.init_args.num_folds)
    name = claim_cv_folder(logger.save_dir, logger.name)
    cv_dir = Path(logger.save_dir) / name
    saved = yaml.safe_load(full_config).get("cv", {})
    saved.pop("config", None)
    (cv_dir / "cv_config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    where = f", {options.workers} at a time on Ray" if options.workers > 1 else ""
    where = f", on the Ray cluster at {options.address}" if options.address else where
    print(f"qlit cv: {num_folds} folds{where}, logging to {cv_dir}", flush=True)

    jobs: list[tuple[str, FoldJob]] = []
    for k in range(num_folds):
        jobs.append(("hybrid", FoldJob(config, k, name, "hybrid", baselines=True)))
        jobs.append(("twin", FoldJob(twin_of(config), k, f"{name}/classical_twin", "classical twin")))
    per_fold: list[dict[str, dict[str, Any]]] = [{} for _ in range(num_folds)]
    finished = run_jobs(
        run_fold, [job for _, job in jobs], options.workers, options.address, options.gpus_per_fold, "--workers"
    )
    for i, result in finished:
        kind, job = jobs[i]
        per_fold[job.fold][kind] = result
        if len(per_fold[job.fold]) == 2:
            print(f"qlit cv: {fold_line(job.fold, num_folds, per_fold[job.fold])}", flush=True)

    summary = summarize(name, cv_dir, config, per_fold)
    paths = write_cv_report(cv_dir, summary)
    print(f"qlit cv: wrote {', '.join(map(str, paths[:-1]))} and {paths[-1]}", flush=True)
    return summary
