"""Ray: ``qlit cv --workers`` gives the serial run's numbers, and ``qlit tune`` searches on validation rows only.

Every command that runs on Ray runs as ``python -m qlit`` in a session of its own, with a real local Ray (and Ray
Tune's real schedulers and search algorithms). The pytest process never joins a Ray: a driver whose raylet dies
is ended by Ray's core worker (``_exit``, its message going to pytest's captured stderr), and a local Ray's
processes share their driver's process group, so pytest as a driver could vanish without a word.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from qlit.cli import main
from qlit.data import EquityDataModule, IrisDataModule
from tests.conftest import CONFIGS, QUICK, one_line_error

pytest.importorskip("ray")

IRIS = str(CONFIGS / "iris.yaml")
SMALL = ["--trainer.max_epochs=2", "--model.lr=0.1", "--data.init_args.num_folds=2"]
SPACE = {"model.lr": {"loguniform": [0.01, 0.3]}, "model.n_layers": {"randint": [1, 3]}}
TAG_ENV = "QLIT_TEST_TAG"  # inherited by every process a command starts: how a test finds them, and only them


def qlit(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m qlit <args>`` in ``cwd``, in a session of its own; fails the test unless it exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "qlit", *args, *QUICK], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, start_new_session=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def tagged(tag: str) -> list[int]:
    """The live processes (zombies excluded) started with ``QLIT_TEST_TAG=tag`` in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"{TAG_ENV}={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            pass
    return found


def write_space(path: Path, space: dict) -> str:
    path.write_text(yaml.safe_dump(space))
    return str(path)


def fold_numbers(summary: dict) -> list[tuple]:
    models = [summary["folds"], *(b["folds"] for b in summary["baselines"].values())]
    return [(m[k]["test_acc"], m[k].get("test_loss"), m[k]["confusion_matrix"]) for m in models for k in range(2)]


def test_parallel_cv_gives_the_serial_numbers_and_layout(tmp_path: Path):
    main(["cv", "--config", IRIS, *SMALL, "--trainer.logger.init_args.name=serial", *QUICK])  # no Ray
    printed = qlit(["cv", "--config", IRIS, *SMALL, "--trainer.logger.init_args.name=parallel", "--workers=2"],
                   tmp_path).stdout
    assert "2 folds, 2 at a time on Ray" in printed
    serial = json.loads((tmp_path / "lightning_logs/serial/cv_summary.json").read_text())
    parallel = json.loads((tmp_path / "lightning_logs/parallel/cv_summary.json").read_text())
    assert fold_numbers(parallel) == fold_numbers(serial)  # exactly: each fold is deterministic wherever it runs
    assert [f["test_indices"] for f in parallel["folds"]] == [f["test_indices"] for f in serial["folds"]]
    for name in ("serial", "parallel"):
        root = tmp_path / "lightning_logs" / name
        for k in range(2):  # the workers wrote where the serial run writes, relative to the command's folder
            assert (root / f"fold_{k}" / "checkpoints" / "best.ckpt").is_file()
            assert (root / "classical_twin" / f"fold_{k}" / "checkpoints" / "best.ckpt").is_file()
    assert not list(Path.home().glob("ray_results/*/lightning_logs"))


JOB_FAILING_ON_RAY = """
from qlit.errors import QlitError
from qlit.evaluation.runner import run_jobs
from qlit.io.config_files import load_yaml_strict

try:
    list(run_jobs(load_yaml_strict, ["ok.yaml", "missing.yaml"], workers=2))
except QlitError as err:
    print(f"QlitError: {err}")
"""


def test_a_job_failing_on_ray_raises_its_own_error(tmp_path: Path):
    (tmp_path / "ok.yaml").write_text("a: 1\n")  # relative paths: the workers resolve them in the command's folder
    done = subprocess.run([sys.executable, "-c", JOB_FAILING_ON_RAY], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "QlitError: config missing.yaml does not exist"


def test_inner_folds_never_hold_the_outer_test_rows():
    outer = IrisDataModule(num_folds=3, fold=1)
    outer.setup("fit")
    seen = []
    for j in range(2):
        inner = IrisDataModule(num_folds=3, fold=1, inner_folds=2, inner_fold=j)
        inner.setup("fit")
        assert len(inner.indices["test"]) == 0
        rows = np.concatenate([inner.indices["train"], inner.indices["val"]])
        assert not set(rows) & set(outer.indices["test"])
        assert sorted(rows) == sorted(np.concatenate([outer.indices["train"], outer.indices["val"]]))
        seen.append(set(inner.indices["val"]))
        assert inner.split_identity()["inner_fold"] == j
    assert not seen[0] & seen[1]  # the inner folds partition the outer fold's non-test rows


def test_nested_walk_forward_stays_before_the_outer_test_span():
    outer = EquityDataModule(num_folds=3, fold=2, lags=3, rolling_window=5)
    outer.setup("fit")
    inner = EquityDataModule(num_folds=3, fold=2, lags=3, rolling_window=5, inner_folds=2, inner_fold=1)
    inner.setup("fit")
    dates = inner.sample_dates
    test_start = dates[outer.indices["test"]].min()
    assert dates[inner.indices["train"]].max() < dates[inner.indices["val"]].min() < test_start
    assert dates[inner.indices["val"]].max() < test_start


@pytest.fixture(scope="module")
def iris_tune(tmp_path_factory) -> tuple[Path, dict, str]:
    """One small nested sweep: Iris, 2 outer folds, 2 trials each, 2 epochs, 2 inner folds, 2 workers."""
    root = tmp_path_factory.mktemp("tune")
    space = write_space(root / "space.yaml", {**SPACE, "model.n_layers": {"grid": [1, 0]}})  # 0 layers fails
    qlit(["tune", "--config", IRIS, "--trainer.max_epochs=2", "--model.lr=0.1", "--data.init_args.num_folds=2",
          "--space", space, "--num_samples=1", "--inner_folds=2", "--workers=2"], root)
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


def test_best_config_runs_as_it_is(iris_tune, tmp_path: Path):
    _, summary, folder = iris_tune
    best = yaml.safe_load((folder / "best_config.yaml").read_text())
    assert best["model"]["lr"] == pytest.approx(summary["best_config"]["model.lr"])
    assert best["model"]["n_layers"] == summary["best_config"]["model.n_layers"]
    main(["fit", "--config", str(folder / "best_config.yaml"), "--trainer.max_epochs=1", *QUICK])
    assert list((tmp_path / "lightning_logs" / "iris").glob("version_0/checkpoints/best.ckpt"))


@pytest.mark.parametrize(
    ("space", "options", "words"),
    [
        ({"model.no_such_arg": {"uniform": [0, 1]}}, [], ("model.no_such_arg", "no option")),
        ({"data.window": {"randint": [1, 5]}}, [], ("data.window", "IrisDataModule")),
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
    from qlit.evaluation import tune

    def fail(*args, **kwargs):
        raise QlitError("Ray Tune could not start")

    monkeypatch.setattr(tune.runner, "connect", lambda *args: (None, False))  # no Ray in the pytest process
    monkeypatch.setattr(tune, "_tuner", fail)
    path = write_space(tmp_path / "space.yaml", SPACE)
    one_line_error(["tune", "--config", IRIS, "--space", path], capfd, ("could not start",))
    assert not list(tmp_path.glob("lightning_logs/iris/tune_*"))
    one_line_error(["tune", "--config", IRIS, "--space", path, "--resume=true"], capfd, ("no unfinished",))


def test_missing_space_file_is_one_line(tmp_path: Path, capfd):
    one_line_error(["tune", "--config", IRIS, "--space", "nowhere.yaml"], capfd, ("nowhere.yaml", "does not exist"))


def _state_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("ray/outer_0/experiment_state-*.json"), key=lambda p: p.name)


def _trial_states(folder: Path) -> dict[str, str]:
    """Trial id -> status, from the experiment state Ray Tune would restore from (the newest by name)."""
    saved = _state_files(folder)
    try:
        content = json.loads(saved[-1].read_text()) if saved else {}
    except (OSError, ValueError):  # being written
        return {}
    return {json.loads(t[0])["trial_id"]: json.loads(t[0])["status"] for t in content.get("trial_data", [])}


def _wait_until_gone(tag: str, limit_s: float) -> list[int]:
    deadline = time.monotonic() + limit_s
    while (left := tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _stop(tag: str, sweep: subprocess.Popen) -> None:
    """Whatever a failed test left: the sweep's own session, then single tagged PIDs (never another group)."""
    try:
        os.killpg(sweep.pid, signal.SIGKILL)  # its own session (start_new_session), not pytest's group
    except ProcessLookupError:
        pass
    for pid in tagged(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the run's processes in /proc")
def test_killed_sweep_leaves_no_process_resumes_and_keeps_finished_trials(tmp_path: Path):
    lrs = [0.01, 0.03, 0.1, 0.3]
    space = write_space(tmp_path / "space.yaml", {"model.lr": {"grid": lrs}})
    command = ["tune", "--config", IRIS, "--trainer.max_epochs=3", "--data.init_args.num_folds=2", "--space", space,
               "--num_samples=1", "--inner_folds=2", "--nested=false", "--asha=false"]
    tag = uuid.uuid4().hex
    # TUNE_GLOBAL_CHECKPOINT_S=0: Ray Tune saves its state after every step, so the kill finds a trial saved
    env = {**os.environ, TAG_ENV: tag, "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    sweep = subprocess.Popen([sys.executable, "-m", "qlit", *command, *QUICK], cwd=tmp_path, env=env,
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "lightning_logs" / "iris" / "tune_0"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and "TERMINATED" not in _trial_states(folder).values():
            time.sleep(0.1)
        os.kill(sweep.pid, signal.SIGKILL)  # kill -9 of the driver alone, as from a shell
        sweep.wait()
        # Ray's agents outlive their raylet by 60 s (they try to tell the dead GCS first) unless qlit stops them
        assert _wait_until_gone(tag, 30) == [], "processes of the killed sweep are still running"
    finally:
        _stop(tag, sweep)
    before = {t: s for t, s in _trial_states(folder).items() if s == "TERMINATED"}
    assert before and len(before) < len(lrs), "the sweep must be killed part-way"
    assert not (folder / "tune_summary.json").exists()

    resumed = qlit([*command, "--resume=true"], tmp_path, env=env)
    assert _wait_until_gone(tag, 30) == []  # a sweep that ends leaves nothing running either
    assert f"resuming {folder.relative_to(tmp_path)}" in resumed.stdout
    summary = json.loads((folder / "tune_summary.json").read_text())
    trials = summary["outer_folds"][0]["trials"]
    assert sorted(t["config"]["model.lr"] for t in trials) == lrs
    assert all(t["status"] == "complete" for t in trials)
    # Ray's saved state is the resumed run's alone, and agrees with the summary
    assert len(_state_files(folder)) == 1
    states = _trial_states(folder)
    assert len(states) == len(lrs) and set(states.values()) == {"TERMINATED"} and set(before) <= set(states)
    assert all(any(trial in t["trial"] for t in trials) for trial in states)
    for trial in before:  # restored, not trained again: one events file per inner fold
        inner_folds = list((folder / "outer_0" / trial).iterdir())
        assert inner_folds and all(len(list(inner.glob("events.out.tfevents.*"))) == 1 for inner in inner_folds)
    assert not list((tmp_path / "lightning_logs" / "iris").glob("tune_1"))  # resumed in place, no new sweep


def test_optuna_search_through_ray_tune(tmp_path: Path):
    pytest.importorskip("optuna")
    space = write_space(tmp_path / "space.yaml", {"model.lr": {"loguniform": [0.01, 0.3]}})
    qlit(["tune", "--config", IRIS, "--trainer.max_epochs=1", "--data.init_args.num_folds=2", "--space", space,
          "--num_samples=3", "--inner_folds=2", "--nested=false", "--search=optuna", "--asha=false"], tmp_path)
    summary = json.loads((tmp_path / "lightning_logs/iris/tune_0/tune_summary.json").read_text())
    trials = summary["outer_folds"][0]["trials"]
    assert summary["search"] == "optuna" and not summary["nested"] and len(trials) == 3
    assert all(0.01 <= t["config"]["model.lr"] <= 0.3 and t["status"] == "complete" for t in trials)
    assert len({t["config"]["model.lr"] for t in trials}) == 3


@pytest.mark.gpu
def test_parallel_cv_shares_a_gpu(tmp_path: Path):
    main(["cv", "--config", IRIS, *SMALL, "--trainer.accelerator=gpu", "--workers=2", "--gpus_per_fold=0.5", *QUICK])
    summary = json.loads((tmp_path / "lightning_logs/iris/cv_summary.json").read_text())
    assert len(summary["folds"]) == 2
