"""``qlit tune`` on Ray: nested sweeps scored on validation rows only, their reports and their bad input.

Split from ``tests/test_ray.py`` (whose helpers it uses) so that the two long modules can run on different
pytest-xdist workers. As there, every sweep runs as ``python -m qlit`` in a session of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from qlit.cli import main
from qlit.data import IrisDataModule
from tests.conftest import QUICK, one_line_error
from tests.test_ray import IRIS, SPACE, qlit, write_space

pytest.importorskip("ray")

@pytest.fixture(scope="module")
def iris_tune(tmp_path_factory) -> tuple[Path, dict, str]:
    """One small nested sweep: Iris, 2 outer folds, 2 trials each, 2 epochs, 2 inner folds, one worker.

    One worker: each search's trials share one Ray actor and the refits run in this command, where two workers
    start twice the processes, each with ~11 CPU-seconds of imports (the sweep took 125 CPU-seconds with two, 71
    with one). Trials side by side run in the killed sweep of ``tests/test_ray.py``.
    """
    root = tmp_path_factory.mktemp("tune")
    space = write_space(root / "space.yaml", {**SPACE, "model.n_layers": {"grid": [1, 0]}})  # 0 layers fails
    env = {**os.environ, "XDG_CONFIG_HOME": str(root / "config")}  # where qlit keeps the key of its Ray records
    done = qlit(["tune", "--config", IRIS, "--trainer.max_epochs=2", "--model.lr=0.1", "--data.init_args.num_folds=2",
                 "--space", space, "--num_samples=1", "--inner_folds=2"], root, env=env)
    (root / "stdout.txt").write_text(done.stdout)
    (root / "stderr.txt").write_text(done.stderr)
    folder = root / "lightning_logs" / "iris" / "tune_0"
    return root, json.loads((folder / "tune_summary.json").read_text()), folder


def test_tune_reports_outer_folds_beside_the_untuned_config_and_baselines(iris_tune):
    root, summary, folder = iris_tune
    assert summary["nested"] and len(summary["outer_folds"]) == 2
    for model in ("tuned", "untuned", "logistic_regression", "majority_class"):
        folds = [f["test_acc"] for f in summary[model]["folds"]]
        assert len(folds) == 2 and summary[model]["test_acc_mean"] == pytest.approx(np.mean(folds))
        assert summary[model]["test_acc_std"] == pytest.approx(np.std(folds, ddof=1))
    for outer in summary["outer_folds"]:
        assert len(outer["trials"]) == 2  # 1 sample × the 2 grid values
        failed = [t for t in outer["trials"] if t["config"]["model.n_layers"] == 0]
        assert failed and all(t["status"] == "failed" and "n_layers" in t["error"] for t in failed)
        complete = [t for t in outer["trials"] if t["status"] == "complete"]
        best = min(complete, key=lambda t: t["inner_val_loss_mean"])
        assert outer["best_config"] == best["config"] and best["config"]["model.n_layers"] == 1
    for name in ("tune_summary.md", "tune_scores.png", "best_config.yaml", "best_config_fold_0.yaml"):
        assert (folder / name).is_file()
    for k in range(2):  # trials logged their inner folds where the command ran, not in Ray's folders
        assert list((folder / f"outer_{k}").glob("*/inner_1/events.out.tfevents.*"))
        assert (folder / "tuned" / f"fold_{k}" / "checkpoints" / "best.ckpt").is_file()
    assert "| **mean ± sd** |" in (folder / "tune_summary.md").read_text()
    # each failed trial is one line of qlit's, not Ray Tune's traceback of it (a worker's own noise as Ray stops it
    # at the end of a search, "SystemExit" in its SIGTERM handler under load, is Ray's and still passes)
    output = (root / "stderr.txt").read_text() + (root / "stdout.txt").read_text()
    assert "Trial task failed" not in output and "Trials did not complete" not in output
    assert "in check_circuit" not in output, output[-3000:]  # a frame of the failed trial's traceback
    failed = [line for line in (root / "stdout.txt").read_text().splitlines() if line.endswith("got 0")]
    assert len(failed) == 3 and all("model.n_layers=0 failed: n_layers must be" in line for line in failed), failed
    for record in summary["logistic_regression"]["folds"]:  # C chosen on the same inner folds, not fixed at 1
        assert record["C"] in (0.01, 0.1, 1.0, 10.0, 100.0) and len(record["inner_val_log_loss"]) == 5


def test_tuned_configs_say_where_they_were_tuned(iris_tune, monkeypatch):
    from qlit.evaluation.tune import verify_state

    root, summary, folder = iris_tune
    data = IrisDataModule(num_folds=2)
    data.setup("fit")
    for k in range(2):
        config = yaml.safe_load((folder / f"best_config_fold_{k}.yaml").read_text())["data"]["init_args"]
        cv_fold = IrisDataModule(num_folds=2, fold=k)
        cv_fold.setup("fit")
        assert config["fold"] == k and config["tuned_on"]["outer_fold"] == k
        assert config["tuned_on"]["data_sha256"] == data.data_sha256() == summary["outer_folds"][k]["data_sha256"]
        assert config["tuned_on"]["rows"] == sorted(np.concatenate([cv_fold.indices["train"], cv_fold.indices["val"]]))
    # best_config.yaml comes from one more search over all rows, not the luckiest outer fold's
    best = yaml.safe_load((folder / "best_config.yaml").read_text())["data"]["init_args"]["tuned_on"]
    assert best == {"data_sha256": data.data_sha256(), "outer_fold": None, "rows": "all"}
    assert summary["final_search"]["best_config"] == summary["best_config"]
    assert summary["provenance"]["data"]["data_sha256"] == data.data_sha256()
    assert summary["provenance"]["command"][:2] == ["qlit", "tune"] and summary["provenance"]["versions"]["lightning"]
    assert len(summary["final_search"]["trials"]) == 2 and "nested" in summary["best_config_note"]
    assert (folder / "all").is_dir()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(root / "config"))
    for search in ("outer_0", "outer_1", "all"):  # what --resume would restore is exactly what qlit recorded
        verify_state(folder, search)


def test_tune_tested_each_outer_fold_only_once_on_its_own_rows(iris_tune):
    _, summary, folder = iris_tune
    for k, outer in enumerate(summary["outer_folds"]):
        cv_fold = IrisDataModule(num_folds=2, fold=k)
        cv_fold.setup("fit")
        assert outer["n_test"] == len(cv_fold.indices["test"])
        # no trial's inner split held a test row: each trial's validation rows come from the training rows
        for inner in range(2):
            trial_data = IrisDataModule(num_folds=2, fold=k, inner_folds=2, inner_fold=inner)
            trial_data.setup("fit")
            assert not set(trial_data.indices["val"]) & set(cv_fold.indices["test"])


def test_best_config_runs_as_it_is(iris_tune, tmp_path: Path, capfd):
    _, summary, folder = iris_tune
    best = yaml.safe_load((folder / "best_config.yaml").read_text())
    assert best["model"]["lr"] == pytest.approx(summary["best_config"]["model.lr"])
    assert best["model"]["n_layers"] == summary["best_config"]["model.n_layers"]
    main(["fit", "--config", str(folder / "best_config.yaml"), "--trainer.max_epochs=1", *QUICK])
    assert list((tmp_path / "lightning_logs" / "iris").glob("version_0/checkpoints/best.ckpt"))
    # its search saw every row: no fold of these data scores it
    one_line_error(["test", "--config", str(folder / "best_config.yaml"), "--ckpt_path", "best"], capfd,
                   ("qlit tune search on all rows", "optimistic"))


@pytest.mark.parametrize(
    ("space", "options", "words"),
    [
        ({"model.no_such_arg": {"uniform": [0, 1]}}, [], ("model.no_such_arg", "no option")),
        ({"data.window": {"randint": [1, 5]}}, [], ("data.window", "cannot be tuned")),
        ({"data.classes": {"choice": [["setosa", "virginica"]]}}, [], ("data.classes", "cannot be tuned")),
        ({"model.lr": {"loguniform": [0.1, 0.01]}}, [], ("model.lr", "inverted")),
        ({"model.lr": {"loguniform": [0.1, 0.1]}}, [], ("model.lr", "empty")),
        ({"model.lr": {"lognormal": [0.1, 1]}}, [], ("lognormal", "unknown distribution")),
        ({"model.ansatz": {"choice": []}}, [], ("model.ansatz", "empty list")),
        ({"data.fold": {"choice": [0, 1]}}, [], ("data.fold", "cannot be tuned")),
        (SPACE, ["--num_samples=0"], ("--num_samples", "0")),
        (SPACE, ["--address=127.0.0.1:9"], ("--address 127.0.0.1:9", "no Ray cluster")),
        (SPACE, ["--resume=true"], ("--resume", "no unfinished")),
        ({"model.lr": {"qloguniform": [0.01, 0.1, 0]}}, [], ("model.lr", "qloguniform", "q=0")),
        ({"model.lr": {"quniform": [0.01, 0.1, -0.01]}}, [], ("model.lr", "quniform", "q=-0.01")),
        ({"model.lr": {"qrandn": [0.05, 0.01, 0]}}, [], ("model.lr", "qrandn", "q=0")),
        ({"model.lr": {"quniform": [0.01, 0.1, 0.03]}}, [], ("model.lr", "multiples", "q=0.03")),
        ({"model.n_layers": {"qrandint": [1, 5, 0]}}, [], ("model.n_layers", "qrandint", "q=0")),
        ({"model.n_layers": {"qrandint": [1, 5, -1]}}, [], ("model.n_layers", "qrandint", "q=-1")),
        ({"model.n_layers": {"qrandint": [1, 5, 1.5]}}, [], ("model.n_layers", "whole-number", "q=1.5")),
        ({"model.n_layers": {"qlograndint": [5, 7, 10]}}, [], ("model.n_layers", "no multiple", "q=10")),
    ],
)
def test_bad_sweeps_are_one_line_and_write_nothing(tmp_path: Path, capfd, space, options, words):
    path = write_space(tmp_path / "space.yaml", space)
    one_line_error(["tune", "--config", IRIS, "--space", path, *options], capfd, words)
    assert not list(tmp_path.glob("lightning_logs/iris/tune_*"))


def test_a_bad_ray_address_variable_is_named_as_such(tmp_path: Path, capfd, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    path = write_space(tmp_path / "space.yaml", SPACE)
    line = one_line_error(["tune", "--config", IRIS, "--space", path], capfd, ("RAY_ADDRESS=127.0.0.1:9",))
    assert "--workers" not in line and "--address" not in line
    assert not (tmp_path / "lightning_logs").exists()


def test_a_start_failing_after_the_claim_leaves_no_sweep_to_resume(tmp_path: Path, capfd, monkeypatch):
    from qlit.errors import QlitError
    from qlit.evaluation import tune, tune_trials

    def fail(*args, **kwargs):
        raise QlitError("Ray Tune could not start")

    monkeypatch.setattr(tune.runner, "connect", lambda *args: (None, False))  # no Ray in the pytest process
    monkeypatch.setattr(tune_trials, "tuner", fail)
    path = write_space(tmp_path / "space.yaml", SPACE)
    one_line_error(["tune", "--config", IRIS, "--space", path], capfd, ("could not start",))
    assert not list(tmp_path.glob("lightning_logs/iris/tune_*"))
    one_line_error(["tune", "--config", IRIS, "--space", path, "--resume=true"], capfd, ("no unfinished",))


def test_missing_space_file_is_one_line(tmp_path: Path, capfd):
    one_line_error(["tune", "--config", IRIS, "--space", "nowhere.yaml"], capfd, ("nowhere.yaml", "does not exist"))


def test_optuna_search_through_ray_tune(tmp_path: Path):
    pytest.importorskip("optuna")
    space = write_space(tmp_path / "space.yaml", {"model.lr": {"loguniform": [0.01, 0.3]}})
    qlit(["tune", "--config", IRIS, "--trainer.max_epochs=1", "--data.init_args.num_folds=2", "--space", space,
          "--num_samples=2", "--inner_folds=2", "--nested=false", "--search=optuna", "--asha=false"], tmp_path)
    summary = json.loads((tmp_path / "lightning_logs/iris/tune_0/tune_summary.json").read_text())
    trials = summary["outer_folds"][0]["trials"]
    assert summary["search"] == "optuna" and not summary["nested"] and len(trials) == 2
    assert all(0.01 <= t["config"]["model.lr"] <= 0.3 and t["status"] == "complete" for t in trials)
    assert len({t["config"]["model.lr"] for t in trials}) == 2
