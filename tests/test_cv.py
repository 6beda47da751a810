"""``qlit cv``: every fold trained on its own split, baselines beside it, summaries people can read."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, log_loss, roc_auc_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qlit.cli import QlitCLI, main
from qlit.data import IrisDataModule, SNPDataModule
from qlit.evaluation.cv import cv_folder_name
from qlit.evaluation.metrics import mcnemar
from qlit.evaluation.stats import interval
from qlit.io.checkpoints import load_checkpoint
from qlit.models import HybridClassifier
from tests.conftest import CONFIGS, QUICK

IRIS = str(CONFIGS / "iris.yaml")
GENOMIC = str(CONFIGS / "genomic.yaml")
FOLDS = 3


def images(run_dir: Path) -> list[str]:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return events.Tags()["images"]


@pytest.fixture(scope="module")
def iris_cv(tmp_path_factory) -> tuple[Path, dict, str]:
    """One small Iris cv run (3 folds, 3 epochs): its folder, its summary and what it printed."""
    root = tmp_path_factory.mktemp("cv")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.chdir(root)
        # lr 0.1 so that three epochs learn something: a constant classifier would make weak checks
        main(["cv", "--config", IRIS, "--trainer.max_epochs=3", "--model.lr=0.1", f"--data.init_args.num_folds={FOLDS}",
              *QUICK])
    summary = json.loads((root / "lightning_logs" / "iris" / "cv_summary.json").read_text())
    return root, summary, printed.getvalue()


def test_cv_summary_schema_and_statistics(iris_cv):
    root, summary, printed = iris_cv
    assert summary["metric"] == "test_acc" and summary["num_folds"] == FOLDS
    models = {"hybrid": summary, **summary["baselines"]}
    assert list(summary["baselines"]) == [
        "classical_twin", "logistic_regression", "svm_rbf", "gradient_boosting", "majority_class"
    ]
    t = stats.t.ppf(0.975, FOLDS - 1)
    assert t == pytest.approx(4.303, abs=1e-3)  # Student t, 2 dof: the tables' value
    ratio = np.mean([f["n_test"] / (f["n_train"] + f["n_val"]) for f in summary["folds"]])
    assert summary["test_train_ratio"] == pytest.approx(ratio) and 0.4 < ratio < 0.6  # 3 folds: about 1/2
    for name, result in models.items():
        folds = result["folds"]
        assert [f["fold"] for f in folds] == list(range(FOLDS)), name
        for record in folds:
            assert 0 <= record["test_acc"] <= 1 and record["n_test"] > 0, name
            assert record["test_log_loss"] > 0, name
        acc = np.array([f["test_acc"] for f in folds])
        assert result["test_acc_mean"] == pytest.approx(acc.mean())
        assert result["test_acc_std"] == pytest.approx(acc.std(ddof=1))
        half = t * acc.std(ddof=1) / math.sqrt(FOLDS)
        assert result["test_acc_ci95_plain"] == pytest.approx([max(0, acc.mean() - half), min(1, acc.mean() + half)])
        # Nadeau-Bengio: the folds share training rows, so the variance of the mean is (1/k + n_test/n_train) sd^2
        half = t * acc.std(ddof=1) * math.sqrt(1 / FOLDS + ratio)
        assert result["test_acc_ci95"] == pytest.approx([max(0, acc.mean() - half), min(1, acc.mean() + half)])
    n_test = [f["n_test"] for f in summary["folds"]]
    assert n_test == [f["n_test"] for f in summary["baselines"]["logistic_regression"]["folds"]]

    # one line per fold as it finishes, then the table that is also cv_summary.md
    fold_lines = [line for line in printed.splitlines() if line.startswith("qlit cv: fold ")]
    assert len(fold_lines) == FOLDS
    table = (root / "lightning_logs" / "iris" / "cv_summary.md").read_text()
    assert table in printed
    rows = [line for line in table.splitlines() if re.match(r"\| \d+ \| \d+ \|", line)]
    assert len(rows) == FOLDS
    for row, *records in zip(rows, *(m["folds"] for m in models.values())):
        assert row.split("|")[3:9] == [f" {r['test_acc']:.3f} " for r in records]
    for fold in summary["baselines"]["majority_class"]["folds"]:  # the base rate of each test fold
        assert fold["test_acc"] <= fold["test_base_rate"]
        assert sum(fold["test_class_shares"].values()) == pytest.approx(1)
    assert f"{summary['test_acc_mean']:.3f} ± {summary['test_acc_std']:.3f}" in table


def test_every_model_gets_every_score_from_its_out_of_fold_predictions(iris_cv):
    """oof_predictions.csv covers each row once per model; every score and the McNemar test follow from it."""
    root, summary, _ = iris_cv
    cv_dir = root / "lightning_logs" / "iris"
    oof = pd.read_csv(cv_dir / "oof_predictions.csv")
    models = {"hybrid": summary, **summary["baselines"]}
    assert sorted(oof["row"]) == list(range(100))  # Iris setosa/versicolor: each row tested exactly once
    assert set(oof["repeat"]) == {0} and summary["oof_predictions"] == "lightning_logs/iris/oof_predictions.csv"
    classes = summary["class_names"]
    labels = oof["label"].map(classes.index).to_numpy()
    predicted = {}
    for name, result in models.items():
        probabilities = oof[[f"{name}_p_{c}" for c in classes]].to_numpy()
        assert np.allclose(probabilities.sum(1), 1, atol=1e-5), name
        predicted[name] = probabilities.argmax(1)
        pooled = result["pooled"]
        assert pooled["test_acc"] == pytest.approx(np.mean(predicted[name] == labels), abs=1e-9), name
        assert pooled["test_balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, predicted[name])), name
        assert pooled["test_log_loss"] == pytest.approx(log_loss(labels, probabilities), rel=1e-4), name
        assert pooled["test_brier"] == pytest.approx(np.mean((probabilities[:, 1] - labels) ** 2), rel=1e-4), name
        if name != "majority_class":
            assert pooled["test_auroc"] == pytest.approx(roc_auc_score(labels, probabilities[:, 1]), rel=1e-4), name
        for key in ("test_balanced_acc", "test_macro_f1", "test_auroc", "test_log_loss", "test_brier"):
            values = [f[key] for f in result["folds"]]
            assert result[f"{key}_mean"] == pytest.approx(np.mean(values)), (name, key)
        for k, record in enumerate(result["folds"]):  # the per-fold accuracy is the fold's rows of the same file
            rows = (oof["fold"] == k).to_numpy()
            assert record["test_acc"] == pytest.approx(np.mean(predicted[name][rows] == labels[rows])), (name, k)
    prior = oof[[f"majority_class_p_{c}" for c in classes]].to_numpy()
    assert len({tuple(p) for p in prior[(oof["fold"] == 0).to_numpy()]}) == 1  # the training rows' shares, per fold
    for name in summary["baselines"]:
        test = summary["paired_differences"][f"hybrid_minus_{name}"]["mcnemar_exact"][0]
        b = int(np.sum((predicted["hybrid"] == labels) & (predicted[name] != labels)))
        c = int(np.sum((predicted["hybrid"] != labels) & (predicted[name] == labels)))
        assert (test["hybrid_only"], test["baseline_only"], test["n"]) == (b, c, 100), name
        expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
        assert test["p_value"] == pytest.approx(expected), name
    table = (cv_dir / "cv_summary.md").read_text()
    assert "balanced accuracy" in table and "AUROC" in table and "McNemar" in table
    scalars = EventAccumulator(str(cv_dir / "fold_0")).Reload().Tags()["scalars"]
    assert {"test_scores/hybrid/test_auroc", "test_scores/svm_rbf/test_brier"} <= set(scalars)


def test_nadeau_bengio_interval_is_wider_than_the_plain_one():
    values = [0.91, 0.93, 0.88, 0.95, 0.90]
    corrected = interval(values, test_train_ratio=0.25)
    assert corrected["ci95_plain"] == interval(values)["ci95"]
    half_plain = (corrected["ci95_plain"][1] - corrected["ci95_plain"][0]) / 2
    half = (corrected["ci95"][1] - corrected["ci95"][0]) / 2
    assert half == pytest.approx(half_plain * math.sqrt((1 / 5 + 0.25) * 5))  # 1.5 times as wide for 5 folds


def test_mcnemar_exact_counts_only_the_rows_the_models_disagree_on():
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 0])
    first = labels.copy()
    second = labels.copy()
    second[:6] = 1 - second[:6]  # the second model misses six rows the first gets right
    first[9] = 1 - first[9]  # and gets one right that the first misses
    test = mcnemar(labels, first, second)
    assert (test["first_only"], test["second_only"]) == (6, 1)
    assert test["p_value"] == pytest.approx(2 * (1 + 7) / 2**7)  # two-sided binomial, 7 discordant rows
    assert mcnemar(labels, labels, labels)["p_value"] == 1.0


def test_repeated_cv_runs_every_fold_of_every_repeat_on_its_own_split(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["cv", "--config", IRIS, "--trainer.max_epochs=1", "--data.init_args.num_folds=2", "--repeats=2",
          "--tuned_baselines=false", *QUICK])
    cv_dir = tmp_path / "lightning_logs" / "iris"
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    assert summary["repeats"] == 2 and summary["num_folds"] == 2 and len(summary["folds"]) == 4
    assert "svm_rbf" not in summary["baselines"]
    assert [(f["repeat"], f["fold"]) for f in summary["folds"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    tests = [tuple(f["test_indices"]) for f in summary["folds"]]
    assert tests[0] != tests[2]  # another split seed cuts other folds
    assert sorted(tests[0] + tests[1]) == sorted(tests[2] + tests[3]) == list(range(100))
    oof = pd.read_csv(cv_dir / "oof_predictions.csv")
    assert oof.groupby("repeat")["row"].apply(sorted).map(list).tolist() == [list(range(100))] * 2
    for r in range(2):
        config = yaml.safe_load((cv_dir / f"repeat_{r}" / "fold_0" / "config.yaml").read_text())
        assert config["data"]["init_args"]["split_seed"] == r and config["seed_everything"] == 42 + r
    assert len(summary["paired_differences"]["hybrid_minus_logistic_regression"]["mcnemar_exact"]) == 2
    assert "2 folds × 2 repeats" in (cv_dir / "cv_summary.md").read_text()
    assert "repeat 2/2, fold 2/2" in capsys.readouterr().out


def test_cv_refuses_zero_repeats_before_writing(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["cv", "--config", IRIS, "--repeats=0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "qlit: error: --repeats must be at least 1, got 0"
    assert not (tmp_path / "lightning_logs").exists()


def test_cv_pictures_and_tensorboard(iris_cv):
    root, summary, _ = iris_cv
    cv_dir = root / "lightning_logs" / "iris"
    for png in ("cv_test_acc.png", "confusion_matrix.png"):
        assert (cv_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    for k in range(FOLDS):
        for run_dir in (cv_dir / f"fold_{k}", cv_dir / "classical_twin" / f"fold_{k}"):
            assert (run_dir / "confusion_matrix.png").is_file()
            assert "test/confusion_matrix" in images(run_dir)
            assert (run_dir / "checkpoints" / "best.ckpt").is_file()
            # a fold is tested, never resumed or shipped: no last.ckpt, no INT8 export
            assert not (run_dir / "checkpoints" / "last.ckpt").exists()
            assert not list(run_dir.glob("model*"))
        best = Path("lightning_logs/iris") / f"fold_{k}" / "checkpoints" / "best.ckpt"
        assert summary["folds"][k]["best_checkpoint"] == str(best)
    assert np.sum([f["confusion_matrix"] for f in summary["folds"]]) == 100


def test_each_fold_trains_and_tests_on_its_own_split(iris_cv):
    """The LightningCLI trap: re-instantiating from one cached config would train fold 0 k times."""
    root, summary, _ = iris_cv
    test_sets = [set(f["test_indices"]) for f in summary["folds"]]
    assert sum(len(s) for s in test_sets) == 100 == len(set().union(*test_sets))  # disjoint, all samples
    assert set().union(*test_sets) == set(range(100))

    means = []
    for k, record in enumerate(summary["folds"]):
        assert record["data_fold"] == k  # read off the datamodule the trainer used
        for run_dir in (root / record["log_dir"], root / summary["baselines"]["classical_twin"]["folds"][k]["log_dir"]):
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
            assert config["data"]["init_args"]["fold"] == k
            data = IrisDataModule(**config["data"]["init_args"])
            data.setup("fit")
            assert data.indices["test"].tolist() == record["test_indices"]

            # the preprocessing saved at training time was fit on fold k's own training rows
            checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
            saved_mean = checkpoint["IrisDataModule"]["preprocessing"]["scale_mean"].numpy()
            np.testing.assert_allclose(saved_mean, data.x[data.indices["train"]].mean(0))
            means.append(saved_mean)

        # fold k's best checkpoint, on fold k's test rows, gives the accuracy the summary reports
        model = HybridClassifier.load_from_checkpoint(root / record["best_checkpoint"])
        checkpoint = torch.load(root / record["best_checkpoint"], weights_only=True)
        data.preprocessor.load_state_dict(checkpoint["IrisDataModule"]["preprocessing"])
        x, y = next(iter(torch.utils.data.DataLoader(data.test_dataloader().dataset, batch_size=1000)))
        model.eval()
        with torch.no_grad():
            predicted = model.predict_proba(x).argmax(-1)
        assert confusion_matrix(y, predicted).tolist() == record["confusion_matrix"]
        assert (predicted == y).float().mean().item() == pytest.approx(record["test_acc"], abs=1e-6)
        twin = yaml.safe_load((root / summary["baselines"]["classical_twin"]["folds"][k]["config"]).read_text())
        assert twin["model"]["core"] == "classical"
    assert not np.allclose(means[0], means[2])  # different folds, different training rows


def test_fold_config_reproduces_its_fold(iris_cv, monkeypatch):
    root, summary, _ = iris_cv
    monkeypatch.chdir(root)
    fold_dir = Path("lightning_logs/iris/fold_1")
    cv_checkpoint = hashlib.sha256((fold_dir / "checkpoints" / "best.ckpt").read_bytes()).hexdigest()

    main(["fit", "--config", str(fold_dir / "config.yaml"), *QUICK])
    cli = QlitCLI(args=["test", "--config", str(fold_dir / "config.yaml"), "--ckpt_path", "best", *QUICK])

    assert cli.trainer.log_dir == str(fold_dir / "version_0")  # the re-run has its own folder
    # ...and is a full fit again: it keeps last.ckpt and exports the INT8 model the cv fold skipped
    assert (fold_dir / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert (fold_dir / "version_0" / "model_int8.pt").is_file()
    assert cli.trainer.callback_metrics["test_acc"].item() == pytest.approx(summary["folds"][1]["test_acc"], abs=1e-6)
    assert cli.trainer.callback_metrics["test_loss"].item() == pytest.approx(summary["folds"][1]["test_loss"], rel=1e-5)
    assert hashlib.sha256((fold_dir / "checkpoints" / "best.ckpt").read_bytes()).hexdigest() == cv_checkpoint


def test_second_cv_keeps_the_first_and_plots_snp_pca(tmp_path: Path):
    earlier = tmp_path / "lightning_logs" / "genomic"
    (earlier / "fold_0").mkdir(parents=True)
    (earlier / "cv_summary.json").write_text('{"earlier": true}\n')
    assert cv_folder_name(tmp_path / "lightning_logs", "genomic") == "genomic/cv_1"

    main([
        "cv", "--config", GENOMIC, "--trainer.max_epochs=1", "--data.init_args.num_folds=2",
        "--data.init_args.n_individuals=100", "--data.init_args.n_snps=20", "--tuned_baselines=false", *QUICK,
    ])
    assert (earlier / "cv_summary.json").read_text() == '{"earlier": true}\n'
    assert sorted(p.name for p in (earlier / "fold_0").iterdir()) == []
    summary = json.loads((earlier / "cv_1" / "cv_summary.json").read_text())
    assert summary["experiment"] == "genomic/cv_1" and summary["class_names"] == list(SNPDataModule().class_names)
    for k in range(2):
        run_dir = earlier / "cv_1" / f"fold_{k}"
        assert (run_dir / "pca.png").is_file()
        assert {"data/pca", "test/confusion_matrix"} <= set(images(run_dir))
    assert cv_folder_name(tmp_path / "lightning_logs", "genomic") == "genomic/cv_2"


def test_cv_refuses_a_run_without_checkpoints(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cv", "--config", IRIS, "--trainer.fast_dev_run=true", *QUICK])
    assert exit_info.value.code == 2
    assert "qlit: error: qlit cv tests each fold's best checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "extra", "check"),
    [
        (IRIS, [], lambda s: s["test_acc_mean"] >= 0.97),
        (GENOMIC, [], lambda s: s["test_acc_mean"] >= s["baselines"]["logistic_regression"]["test_acc_mean"] - 0.03),
        (GENOMIC, ["--data.init_args.structure=none"],
         # chance (0.2) plus three binomial sd of the mean over 1000 test rows, sqrt(0.16 / 1000)
         lambda s: max(s["test_acc_mean"], *(b["test_acc_mean"] for b in s["baselines"].values())) <= 0.238),
    ],
    ids=["iris", "genomic", "genomic-null"],
)
def test_acceptance(tmp_path: Path, config: str, extra: list[str], check):
    main(["cv", "--config", config, *extra, *QUICK])
    name = yaml.safe_load(Path(config).read_text())["trainer"]["logger"]["init_args"]["name"]
    assert check(json.loads((tmp_path / "lightning_logs" / name / "cv_summary.json").read_text()))


@pytest.mark.parametrize(
    ("options", "env", "named"),
    [
        (["--address=127.0.0.1:1"], None, "--address 127.0.0.1:1"),
        ([], "127.0.0.1:2", "RAY_ADDRESS=127.0.0.1:2"),
        (["--workers=2"], "127.0.0.1:2", "RAY_ADDRESS=127.0.0.1:2"),
    ],
)
def test_cv_with_an_unreachable_ray_is_one_line_and_writes_nothing(
    tmp_path: Path, capfd, monkeypatch, options, env, named
):
    pytest.importorskip("ray")
    from tests.conftest import one_line_error

    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    (tmp_path / "lightning_logs" / "iris").mkdir(parents=True)
    (tmp_path / "lightning_logs" / "iris" / "cv_summary.json").write_text("{}")  # an earlier cv run: next is cv_1/
    line = one_line_error(["cv", "--config", IRIS, *options], capfd, (named, "no Ray cluster answers"))
    assert "--workers" not in line or "--workers" in named
    assert sorted(p.name for p in (tmp_path / "lightning_logs" / "iris").iterdir()) == ["cv_summary.json"]


def test_a_fold_under_shots_takes_accuracy_and_confusion_matrix_from_one_test_pass():
    from qlit.evaluation.folds import FoldJob, run_fold

    # One shot per ⟨Z⟩: every pass over the test rows is a new, very noisy draw of the predictions.
    args = ["--config", IRIS, "--trainer.max_epochs=1", "--model.shots=1", "--model.shot_gradient=exact",
            "--data.init_args.num_folds=2", *QUICK]
    config = QlitCLI(args=args, run=False).config
    record = run_fold(FoldJob(config, 0, "shots"))["record"]
    confusion = np.array(record["confusion_matrix"])
    assert confusion.sum() == record["n_test"]
    assert record["test_acc"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-6)


def test_cv_with_a_given_split_folds_the_training_rows_and_scores_the_given_test_rows_once(tmp_path, monkeypatch):
    from tests.data.test_given_split import TABULAR, given_test_rows, split_table

    monkeypatch.chdir(tmp_path)
    frame = split_table(80)
    frame.to_csv("s.csv", index=False)
    test = sorted(given_test_rows(frame).tolist())
    main(["cv", "--config", TABULAR, "--data.init_args.path=s.csv", "--data.init_args.target=species",
          "--data.init_args.split_column=split", "--data.init_args.n_components=null", "--data.init_args.num_folds=2",
          "--trainer.max_epochs=1", "--trainer.logger.init_args.name=given", "--tuned_baselines=false", *QUICK])
    cv_dir = tmp_path / "lightning_logs" / "given"
    summary = json.loads((cv_dir / "cv_summary.json").read_text())
    folds = [set(f["test_indices"]) for f in summary["folds"]]
    assert not (folds[0] | folds[1]) & set(test), "a cv fold tested a given test row"
    assert sorted(folds[0] | folds[1]) == sorted(set(range(80)) - set(test))
    given = summary["given_test"]
    assert given["n_test"] == len(test) == 40 and given["n_train"] + given["n_val"] == 40
    assert set(given["models"]) == {"hybrid", "classical_twin", "logistic_regression", "majority_class"}
    refit = given["models"]["hybrid"]
    assert refit["data_sha256"] == summary["folds"][0]["data_sha256"]  # one data identity for folds and refit
    checkpoint = load_checkpoint(Path(refit["best_checkpoint"]))
    split = next(v["split"] for v in checkpoint.values() if isinstance(v, dict) and "split" in v)
    assert split["given_split"]["test_rows"] == "given" and split["given_split"]["n_test"] == 40
    assert "Given test rows" in (cv_dir / "cv_summary.md").read_text()
    oof = pd.read_csv(cv_dir / "oof_predictions.csv")
    assert not set(oof["row"]) & set(test) and (oof["id"] == "a" + oof["row"].astype(str)).all()


def test_a_killed_cv_resumes_keeping_its_finished_trainings(tmp_path: Path, monkeypatch, capsys):
    """The state a kill leaves (no summary, some trainings without a result) resumes to the uninterrupted numbers."""
    monkeypatch.chdir(tmp_path)
    args = ["cv", "--config", IRIS, "--trainer.max_epochs=1", "--data.init_args.num_folds=2", "--tuned_baselines=false",
            *QUICK]
    main(args)
    cv_dir = tmp_path / "lightning_logs" / "iris"
    first = json.loads((cv_dir / "cv_summary.json").read_text())
    for written in cv_dir.glob("cv_summary.*"):
        written.unlink()
    (cv_dir / "fold_1" / "cv_result.json").unlink()  # killed while the hybrid trained on fold 1
    kept = cv_dir / "fold_0" / "checkpoints" / "best.ckpt"
    kept_stamp = kept.stat().st_mtime_ns
    capsys.readouterr()

    main([*args, "--resume=true"])
    printed = capsys.readouterr().out
    assert "resuming: 3 of 4 trainings finished, 1 to run" in printed
    assert kept.stat().st_mtime_ns == kept_stamp, "a finished training was trained again"
    assert (cv_dir / "fold_1_interrupted" / "checkpoints" / "best.ckpt").is_file()  # the killed try is kept aside
    resumed = json.loads((cv_dir / "cv_summary.json").read_text())
    assert [f["test_acc"] for f in resumed["folds"]] == [f["test_acc"] for f in first["folds"]]
    assert resumed["folds_covered"] == [0, 1]

    # nothing left to resume, or other settings: one line each, nothing written
    for extra, words in ((["--resume=true"], "has finished"), (["--resume=true", "--trainer.max_epochs=2"], "")):
        if words == "":
            (cv_dir / "cv_summary.json").rename(cv_dir / "moved.json")
            words = "max_epochs"
        with pytest.raises(SystemExit):
            main([*args, *extra])
        err = capsys.readouterr().err.strip()
        assert err.startswith("qlit: error: --resume") and words in err and "\n" not in err, err
    assert not (cv_dir / "cv_1").exists()


def test_cv_runs_the_folds_it_is_told_to(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["cv", "--config", IRIS, "--trainer.max_epochs=1", "--data.init_args.num_folds=3", "--folds=0,2",
          "--tuned_baselines=false", *QUICK])
    summary = json.loads((tmp_path / "lightning_logs" / "iris" / "cv_summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 2] and summary["folds_covered"] == [0, 2]
    assert not (tmp_path / "lightning_logs" / "iris" / "fold_1").exists()
    assert "folds 0, 2 of 3" in (tmp_path / "lightning_logs" / "iris" / "cv_summary.md").read_text()
    for folds, words in (("9", "there is no fold 9 of 3"), ("1,1", "named twice"), ("a", "fold numbers")):
        with pytest.raises(SystemExit):
            main(["cv", "--config", IRIS, "--data.init_args.num_folds=3", f"--folds={folds}",
                  "--trainer.logger.init_args.name=other"])
        assert words in capsys.readouterr().err
    assert not (tmp_path / "lightning_logs" / "other").exists()
