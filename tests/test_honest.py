"""No path to the test fold: checkpoints know their split, ``best``/``last`` mean the experiment's own fits.

Each test here failed before the behaviour it checks was built: a checkpoint of fold 1 tested on
fold 0, ``--ckpt_path best`` resolving into a cv fold, ``last.ckpt`` stuck at the best epoch, and a
fit that scored the test fold on every run.
"""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qlit.cli import main
from qlit.io.checkpoints import load_checkpoint
from tests.conftest import CONFIGS, QUICK, one_line_error

IRIS = str(CONFIGS / "iris.yaml")
GENOMIC = str(CONFIGS / "genomic.yaml")
# 200 simulated individuals at lr 0.3: val_loss stops improving after epoch 5 of 8, so the best and
# the last epoch differ (a run whose loss improves every epoch cannot tell last.ckpt from best.ckpt).
UNSTEADY = ["fit", "--config", GENOMIC, "--data.n_individuals=200", "--model.lr=0.3", *QUICK]


def run(args: list[str]) -> None:
    main([*args, *QUICK])


def fails(args: list[str], capfd) -> str:
    return one_line_error(args, capfd)


def tags(run_dir: Path) -> set[str]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return set(events.Tags()["scalars"])


def test_a_checkpoint_is_never_tested_on_another_split(capfd):
    run(["fit", "--config", IRIS, "--trainer.max_epochs=1", "--data.fold=1"])
    ckpt = load_checkpoint("lightning_logs/iris/version_0/checkpoints/best.ckpt")
    split = ckpt["IrisDataModule"]["split"]
    assert split["fold"] == 1 and len(split["test_sha256"]) == 64

    line = fails(["test", "--config", IRIS, "--ckpt_path=best"], capfd)
    assert "best.ckpt was trained on fold 1 of 5" in line and "fold 0 of 5" in line and "--data.fold 1" in line
    for command in ("validate", "predict"):
        assert "fold 1 of 5" in fails([command, "--config", IRIS, "--ckpt_path=best"], capfd)
    line = fails(["fit", "--config", IRIS, "--ckpt_path=last", "--trainer.max_epochs=2"], capfd)
    assert "resumes training on fold 0" in line
    # other data (a different split seed shuffles the folds) is refused too
    assert "split_seed 3" in fails(["test", "--config", IRIS, "--ckpt_path=best", "--data.fold=1",
                                    "--data.split_seed=3"], capfd)
    assert not (Path("lightning_logs/iris/version_0") / "config_test.yaml").exists()

    # the split it was trained on is accepted; new samples are no test and need no match
    run(["test", "--config", IRIS, "--ckpt_path=best", "--data.fold=1"])
    Path("new.csv").write_text("a,b,c,d\n5.1,3.5,1.4,0.2\n6.4,3.2,4.5,1.5\n")
    run(["predict", "--config", IRIS, "--ckpt_path=best", "--data.predict_file=new.csv"])


def test_best_and_last_mean_the_experiments_own_fit_runs(capfd):
    run(["fit", "--config", IRIS, "--trainer.max_epochs=1"])
    fit_best = Path("lightning_logs/iris/version_0/checkpoints/best.ckpt")
    # a cv run afterwards writes newer best.ckpt files into fold_<k>/ beside version_0/
    run(["cv", "--config", IRIS, "--data.num_folds=2", "--trainer.max_epochs=1", "--tuned_baselines=false"])
    fold_best = Path("lightning_logs/iris/fold_0/checkpoints/best.ckpt")
    assert fold_best.stat().st_mtime_ns > fit_best.stat().st_mtime_ns

    run(["test", "--config", IRIS, "--ckpt_path=best"])
    assert (fit_best.parent.parent / "config_test.yaml").is_file()
    assert not list(fold_best.parent.parent.glob("config_test*.yaml")), "best resolved into a cv fold"
    assert "test_acc" in tags(fit_best.parent.parent) and "test_acc" in tags(fold_best.parent.parent)

    # with only cv runs, there is no best checkpoint of a fit to test
    for path in fit_best.parent.iterdir():
        path.unlink()
    assert "no best.ckpt of a 'qlit fit' run" in fails(["test", "--config", IRIS, "--ckpt_path=best"], capfd)


def test_last_ckpt_is_the_last_epoch_when_the_best_is_earlier():
    run([*UNSTEADY, "--trainer.max_epochs=8"])
    checkpoints = Path("lightning_logs/genomic/version_0/checkpoints")
    best, last = load_checkpoint(checkpoints / "best.ckpt"), load_checkpoint(checkpoints / "last.ckpt")
    assert best["epoch"] < 7, "this run must have its best epoch before its last, or the test proves nothing"
    assert (last["epoch"], last["global_step"]) == (7, 8 * 4)  # 128 training rows, batch 32

    run([*UNSTEADY, "--trainer.max_epochs=10", "--ckpt_path=last"])
    resumed = load_checkpoint(checkpoints / "last.ckpt")
    assert (resumed["epoch"], resumed["global_step"]) == (9, 10 * 4)  # two more epochs, none retrained
    # the resumed run replaced its best checkpoint instead of adding a best-v1.ckpt beside it
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_fit_never_scores_the_test_fold(capfd):
    run(["fit", "--config", IRIS, "--trainer.max_epochs=2"])
    run_dir = Path("lightning_logs/iris/version_0")
    logged = tags(run_dir)
    assert not [tag for tag in logged if "test" in tag], logged
    assert {"float_val_acc", "int8_val_acc", "hp/best_val_loss", "hp/best_val_acc"} <= logged
    assert "hp_metric" not in logged
    out = capfd.readouterr().out
    assert "test" not in out.replace("qlit test", "")
    assert "best epoch 1 (val_loss" in out and str(run_dir) in out

    # the test fold is scored when asked, float and INT8 side by side
    run(["test", "--config", IRIS, "--ckpt_path=best"])
    assert {"test_acc", "int8_test_acc", "hp/test_acc"} <= tags(run_dir)
    assert "int8_test_acc" in capfd.readouterr().out


def test_a_resumed_fit_refuses_settings_it_would_ignore(capfd):
    run(["fit", "--config", IRIS, "--trainer.max_epochs=1"])
    line = fails(["fit", "--config", IRIS, "--ckpt_path=last", "--trainer.max_epochs=2", "--model.lr=0.5"], capfd)
    assert "model.lr=0.5 here but 0.01 in the checkpoint" in line
    assert load_checkpoint("lightning_logs/iris/version_0/checkpoints/last.ckpt")["epoch"] == 0
    run(["fit", "--config", IRIS, "--ckpt_path=last", "--trainer.max_epochs=2"])  # training longer is fine
    assert load_checkpoint("lightning_logs/iris/version_0/checkpoints/last.ckpt")["epoch"] == 1


def test_cv_under_ddp_is_refused_before_writing(capfd):
    line = fails(["cv", "--config", IRIS, "--trainer.strategy=ddp", "--trainer.devices=2",
                  "--trainer.accelerator=cpu"], capfd)
    assert "qlit cv" in line and "ddp" in line
    assert not Path("lightning_logs").exists()
