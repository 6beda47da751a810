"""What a ``qlit tune`` sweep leaves to look at: one TensorBoard run per trial and inner fold, with the tuned keys,
folds and score in the HParams tab, no copies by Ray, and ``tune_scores.png`` with every trial.

No sweep runs here (``tests/test_tune.py`` runs one): a trial runs in-process with Ray's two calls replaced, the
figure is drawn from hand-made trials.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qlit.cli import main
from qlit.errors import QlitError
from qlit.evaluation import plots, tune_trials
from qlit.evaluation.tune_trials import SCORE, TRIAL_METRICS, TrialSetup
from tests.conftest import QUICK
from tests.test_ray import IRIS, write_space

ray_tune = pytest.importorskip("ray.tune")


def read_run(run: Path) -> tuple[list[dict], list[list[str]], int, dict[str, float]]:
    """One TensorBoard run folder: each HParams session start (its values), each experiment (its metric names), the
    number of session ends, and the value at the last step of each ``hp/`` scalar."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    starts, experiments, ends, scalars = [], [], 0, {}
    for path in sorted(run.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                plugin = value.metadata.plugin_data
                if plugin.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
                    if data.HasField("session_start_info"):
                        hparams = data.session_start_info.hparams.items()
                        starts.append({k: v.number_value if v.HasField("number_value") else v.string_value
                                       for k, v in hparams})
                    elif data.HasField("experiment"):
                        experiments.append([m.name.tag for m in data.experiment.metric_infos])
                    elif data.HasField("session_end_info"):
                        ends += 1
                elif value.tag.startswith("hp/"):
                    number = float(tensor_util.make_ndarray(value.tensor)) if value.HasField("tensor") else (
                        value.simple_value)
                    if value.tag not in scalars or event.step >= scalars[value.tag][0]:
                        scalars[value.tag] = (event.step, number)
    return starts, experiments, ends, {tag: v for tag, (_, v) in scalars.items()}


@pytest.fixture
def trial_setup(tmp_path: Path, monkeypatch) -> TrialSetup:
    """The `TrialSetup` ``qlit tune`` gives its trials (outer fold 0, 2 inner folds, 2 epochs), caught before Ray."""
    from qlit.evaluation import tune

    found = {}

    def catch(setup, *args, **kwargs):
        found["setup"] = setup
        raise QlitError("caught before Ray Tune starts")

    monkeypatch.setattr(tune.runner, "connect", lambda *args: (None, False))  # no Ray in the pytest process
    monkeypatch.setattr(tune_trials, "tuner", catch)
    space = write_space(tmp_path / "space.yaml", {"model.lr": {"loguniform": [0.01, 0.3]},
                                                  "data.batch_size": {"choice": [8, 16]}})
    with pytest.raises(SystemExit):
        # a logger that would add Lightning's own hp_metric entry: a trial's run must still have one entry only
        main(["tune", "--config", IRIS, "--space", space, "--trainer.max_epochs=2", "--data.init_args.num_folds=2",
              "--inner_folds=2", "--nested=false", "--trainer.logger.init_args.default_hp_metric=true", *QUICK])
    monkeypatch.setattr(tune_trials.runner, "as_qlit_worker", lambda cwd: None)  # the test's folder and threads
    return found["setup"]


def run_trial(setup: TrialSetup, monkeypatch, trial: str, report) -> None:
    """`tune_trials.run_trial` as Ray runs it, with Ray's trial id and ``tune.report`` replaced."""
    monkeypatch.setattr(ray_tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: trial))
    monkeypatch.setattr(ray_tune, "report", report)
    tune_trials.run_trial({"model.lr": np.float64(0.1), "data.batch_size": np.int64(8)}, setup)


def test_a_trial_is_one_run_per_inner_fold_with_its_keys_folds_and_score(trial_setup, tmp_path: Path, monkeypatch):
    reports: list[dict] = []
    run_trial(trial_setup, monkeypatch, "abc_00000", reports.append)
    trial = tmp_path / "lightning_logs" / "iris" / "tune_0" / "outer_0" / "abc_00000"
    assert sorted({p.parent for p in tmp_path.rglob("events.out.tfevents.*")}) == [trial / "inner_0", trial / "inner_1"]
    score = reports[-1][SCORE]
    for j in range(2):
        starts, experiments, ends, scalars = read_run(trial / f"inner_{j}")
        # one HParams entry per run: the tuned model and data keys, the trial, its outer and inner fold
        assert starts == [{"model.lr": pytest.approx(0.1), "data.batch_size": 8, "trial": "abc_00000",
                           "outer_fold": "0", "inner_fold": j}]
        assert experiments == [list(TRIAL_METRICS)] and ends == 1
        assert scalars[f"hp/{SCORE}"] == pytest.approx(score)  # the trial's score, in each of its inner folds
        fold_best = min(r["val_loss"] for r in reports if r.get("inner_fold") == j and "epoch" in r)
        assert scalars["hp/best_val_loss"] == pytest.approx(fold_best)
    assert score == pytest.approx(np.mean([read_run(trial / f"inner_{j}")[3]["hp/best_val_loss"] for j in range(2)]))


def test_a_stopped_trial_is_in_the_hparams_tab_with_its_best_epoch_so_far(trial_setup, tmp_path: Path, monkeypatch):
    reports: list[dict] = []

    def stop_at_the_second_report(metrics: dict) -> None:  # as Ray ends a trial ASHA stopped
        reports.append(metrics)
        if len(reports) == 2:
            raise SystemExit(0)

    with pytest.raises(SystemExit):
        run_trial(trial_setup, monkeypatch, "abc_00001", stop_at_the_second_report)
    trial = tmp_path / "lightning_logs" / "iris" / "tune_0" / "outer_0" / "abc_00001"
    assert not (trial / "inner_1").exists()
    starts, _, ends, scalars = read_run(trial / "inner_0")
    assert len(starts) == 1 and starts[0]["inner_fold"] == 0 and ends == 0  # not a finished session
    assert f"hp/{SCORE}" not in scalars
    assert scalars["hp/best_val_loss"] == pytest.approx(min(r["val_loss"] for r in reports))


def test_trial_hparams_are_values_tensorboard_shows():
    setup = TrialSetup(config=None, outer_fold=None, inner_folds=5, name="x/tune_0", cwd=".")
    params = {"model.n_layers": np.int64(3), "model.lr": np.float64(0.02), "model.hidden": [8, 4], "data.n_components": 2}
    assert tune_trials.trial_hparams(setup, params, 4, "t_00002") == {
        "model.n_layers": 3, "model.lr": 0.02, "model.hidden": "[8, 4]", "data.n_components": 2,
        "trial": "t_00002", "outer_fold": "all", "inner_fold": 4,
    }
    assert all(type(v) in (int, float, str) for v in tune_trials.trial_hparams(setup, params, 4, "t").values())


def test_ray_writes_its_results_but_no_tensorboard_copy(monkeypatch):
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    callbacks = _create_default_callbacks(tune_trials.ray_callbacks())  # what Tuner.fit adds to them
    assert not [c for c in callbacks if isinstance(c, TBXLoggerCallback)]
    for kind in (CSVLoggerCallback, JsonLoggerCallback):  # result.json, progress.csv: one of each
        assert len([c for c in callbacks if isinstance(c, kind)]) == 1


def test_trial_records_keep_what_a_stopped_trial_was_stopped_at():
    def result(metrics, error=None):
        return SimpleNamespace(metrics=metrics, error=error, path="/r/run_trial_abc_00000_0", config={"model.lr": 0.1})

    done = {"trial_id": "abc_00000", "inner_folds_done": 2, SCORE: 0.4, "val_loss": 0.4, "training_iteration": 5}
    stopped = {"trial_id": "abc_00001", "inner_folds_done": 0, "val_loss": 0.7, "training_iteration": 2}
    records = tune_trials.trial_records([result(done), result(stopped), result({}, RuntimeError("boom"))],
                                        ["model.lr"], 2)
    assert [r["status"] for r in records] == ["complete", "stopped early (ASHA)", "failed"]
    assert [r["trial_id"] for r in records] == ["abc_00000", "abc_00001", None]
    assert [r["val_loss_at_stop"] for r in records] == [None, 0.7, None]
    assert [r[SCORE] for r in records] == [0.4, None, None]


def hand_made_trials() -> list[dict]:
    """Two outer folds of four trials: two complete, one stopped by ASHA, one failed."""
    trials = []
    for i in range(8):
        fold, kind = divmod(i, 4)
        trials.append({
            "config": {"model.lr": 0.01 * (i + 1), "model.n_layers": 1 + i % 3, "model.ansatz": ["basic", "strong"][i % 2]},
            "status": ["complete", "complete", "stopped early (ASHA)", "failed"][kind],
            SCORE: 0.4 + 0.01 * i if kind < 2 else None,
            "val_loss_at_stop": 0.9 if kind == 2 else None,
            "outer_fold": fold,
        })  # fmt: skip
    return trials


def points(ax) -> list[tuple[float, float, bool]]:
    """Every point in a panel: x, y (in data units, or axes units for a cross along the top) and whether filled."""
    found = []
    for collection in ax.collections:
        filled = len(collection.get_facecolors()) > 0 and collection.get_facecolors()[0][3] > 0
        found += [(float(x), float(y), bool(filled)) for x, y in collection.get_offsets()]
    return found


def test_tune_scores_figure_shows_every_trial_on_axes_that_fit_each_key():
    trials = hand_made_trials()
    space = {"model.lr": ("loguniform", [0.01, 0.3]), "model.n_layers": ("randint", [1, 4]),
             "model.ansatz": ("choice", ["strong", "basic", "cross"])}
    fig = plots.tune_scores_figure(trials, list(space), SCORE, "iris/tune_0", space=space)
    plots.render(fig)
    lr, layers, ansatz = fig.axes
    for ax in (lr, layers, ansatz):
        drawn = points(ax)
        assert len(drawn) == len(trials) + 2  # every trial, and a star on the best of each outer fold
        assert sum(1 for _, y, filled in drawn if y == pytest.approx(0.9) and not filled) == 2  # stopped: hollow
    assert lr.get_xscale() == "log" and layers.get_xscale() == "linear"
    layer_ticks = [t for t in layers.get_xticks() if layers.get_xlim()[0] <= t <= layers.get_xlim()[1]]
    assert layer_ticks and all(float(t).is_integer() for t in layer_ticks)
    assert [t.get_text() for t in ansatz.get_xticklabels()] == ["strong", "basic", "cross"]  # the space's order
    xs = {x for x, _, _ in points(ansatz)}
    assert all(-0.5 < x < 1.5 for x in xs)  # strong and basic; no trial at cross
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("stopped early" in t for t in legend) and any("failed" in t for t in legend)
    assert "outer fold 0" in legend and "outer fold 1" in legend


def test_tune_scores_figure_without_a_space_reads_the_values():
    trials = [t for t in hand_made_trials() if t["outer_fold"] == 0]
    fig = plots.tune_scores_figure(trials, ["model.n_layers", "model.ansatz"], SCORE, "one search")
    plots.render(fig)
    layers, ansatz = fig.axes
    assert all(float(t).is_integer() for t in layers.get_xticks())
    assert [t.get_text() for t in ansatz.get_xticklabels()] == ["basic", "strong"]
    assert len(points(layers)) == len(trials) + 1
    assert not fig.legends[0].get_texts()[-1].get_text().startswith("outer fold")  # one search: one colour
    assert all(math.isfinite(y) for _, y, _ in points(layers))
