"""Trained models under shots and noise: `qlit test` with them, `qlit robustness`, and noise-aware training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from qlit.cli import main
from tests.conftest import CONFIGS, QUICK, one_line_error

IRIS = str(CONFIGS / "iris.yaml")


def _fit(root: Path, name: str, *overrides: str) -> Path:
    main(["fit", "--config", IRIS, *QUICK, "--trainer.max_epochs=3", f"--trainer.logger.init_args.save_dir={root}",
          f"--trainer.logger.init_args.name={name}", *overrides])
    return root / name / "version_0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("robustness")
    return {
        "root": root,
        "quantum": _fit(root, "quantum"),
        "twin": _fit(root, "twin", "--model.core=classical"),
        "noisy": _fit(root, "noisy", "--model.noise={depolarizing: 0.05}", "--model.shots=50"),
    }


def _args(runs, name: str) -> list[str]:
    return ["--config", IRIS, *QUICK, f"--trainer.logger.init_args.save_dir={runs['root']}",
            f"--trainer.logger.init_args.name={name}"]


def _test_loss(capfd, runs, name: str, *overrides: str) -> float:
    capfd.readouterr()
    main(["test", *_args(runs, name), "--ckpt_path=best", *overrides])
    out = capfd.readouterr().out
    return float(re.search(r"test_loss\s+([0-9.]+)", out).group(1))


def test_a_noiseless_checkpoint_is_tested_under_noise_and_shots(runs, capfd):
    exact = _test_loss(capfd, runs, "quantum")
    assert _test_loss(capfd, runs, "quantum") == exact  # deterministic without shots
    noisy = _test_loss(capfd, runs, "quantum", "--model.noise={depolarizing: 0.3}")
    sampled = _test_loss(capfd, runs, "quantum", "--model.shots=5")
    assert noisy != exact and sampled != exact


def test_noise_aware_training_keeps_run_conditions_out_of_the_architecture(runs, capfd):
    checkpoint = torch.load(runs["noisy"] / "checkpoints" / "best.ckpt", weights_only=True)
    assert "noise" not in checkpoint["hyper_parameters"] and "shots" not in checkpoint["hyper_parameters"]
    config = yaml.safe_load((runs["noisy"] / "config.yaml").read_text())
    assert config["model"]["noise"] == {"depolarizing": 0.05} and config["model"]["shots"] == 50
    # Trained noisy, tested noiseless and noisy: the same checkpoint fits either config.
    assert _test_loss(capfd, runs, "noisy") != _test_loss(capfd, runs, "noisy", "--model.noise={depolarizing: 0.05}")


def test_robustness_sweep_writes_table_json_and_figure(runs, capfd):
    twin = runs["twin"] / "checkpoints" / "best.ckpt"
    capfd.readouterr()
    main(["robustness", *_args(runs, "quantum"), "--ckpt_path=best", "--noise_levels=[0, 0.2]",
          "--shots=[null, 10]", "--repeats=2", f"--twin_ckpt={twin}"])
    out = capfd.readouterr().out
    folder = runs["quantum"] / "robustness"
    report = json.loads((folder / "robustness.json").read_text())
    assert (folder / "robustness.png").stat().st_size > 1000
    assert "| depolarizing p | exact | 10 shots |" in out and out == (folder / "robustness.md").read_text()
    cells = {(c["level"], c["shots"]): c for c in report["cells"]}
    assert set(cells) == {(0, None), (0.2, None), (0, 10), (0.2, 10)}
    assert len(cells[(0, 10)]["scores"]) == 2 and len(cells[(0, None)]["scores"]) == 1
    assert cells[(0, None)]["acc_mean"] == report["noiseless_acc"]
    assert report["twin_acc"] is not None and "Classical twin" in out
    assert report["provenance"]["command"][:2] == ["qlit", "robustness"]
    assert report["provenance"]["data"]["val_sha256"] and report["provenance"]["versions"]["torch"]
    # A second sweep never overwrites the first.
    main(["robustness", *_args(runs, "quantum"), "--ckpt_path=best", "--noise_levels=[0]", "--shots=[null]"])
    assert (runs["quantum"] / "robustness_1" / "robustness.json").exists()


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["--channel=gate_flip"], ("gate_flip", "depolarizing")),
        (["--noise_levels=[0, 1.5]"], ("1.5", "[0, 1]")),
        (["--shots=[0]"], ("shots", "0")),
        (["--twin_ckpt=QUANTUM"], ("twin_ckpt", "classical")),
    ],
)
def test_bad_robustness_settings_are_one_line(runs, capfd, overrides, words):
    quantum = str(runs["quantum"] / "checkpoints" / "best.ckpt")
    overrides = [o.replace("QUANTUM", quantum) for o in overrides]
    before = set(runs["quantum"].iterdir())
    one_line_error(["robustness", *_args(runs, "quantum"), "--ckpt_path=best", *overrides], capfd, words)
    assert set(runs["quantum"].iterdir()) == before


def test_robustness_needs_a_checkpoint(capfd):
    one_line_error(["robustness", "--config", IRIS], capfd, ("--ckpt_path",))


def test_a_resume_keeps_the_conditions_it_was_trained_under(runs, capfd):
    checkpoint = torch.load(runs["noisy"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["run_conditions"] == {"shots": 50, "noise": {"depolarizing": 0.05},
                                            "shot_gradient": "parameter-shift"}
    resume = ["fit", *_args(runs, "noisy"), "--ckpt_path=last", "--trainer.max_epochs=4"]
    one_line_error(resume, capfd, ("model.noise={}", "{'depolarizing': 0.05}", "model.shots=None"))
    one_line_error([*resume, "--model.noise={depolarizing: 0.05}", "--model.shots=100"], capfd,
                   ("model.shots=100 here but 50",))
    main([*resume, "--model.noise={depolarizing: 0.05}", "--model.shots=50"])  # the same conditions resume
    assert torch.load(runs["noisy"] / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


def _sweep(runs, capfd, *options: str) -> tuple[dict, str, Path]:
    capfd.readouterr()
    main(["robustness", *_args(runs, "quantum"), "--ckpt_path=best", "--noise_levels=[0]", "--shots=[null]", *options])
    captured = capfd.readouterr()
    folder = Path(re.search(r"qlit robustness: wrote (\S+)", captured.err).group(1))
    return json.loads((folder / "robustness.json").read_text()), captured.out, folder


def test_robustness_scores_the_validation_rows_unless_asked_for_the_test_fold(runs, capfd):
    from qlit.data import IrisDataModule
    from qlit.evaluation.robustness import robustness_figure

    data = IrisDataModule(classes=["setosa", "versicolor"], num_folds=5, fold=0, val_fraction=0.2, split_seed=0)
    data.setup("validate")
    sizes = {split: len(data.indices[split]) for split in ("val", "test")}
    assert sizes["val"] != sizes["test"]
    for options, split, words in (((), "val", "validation"), (("--split=test",), "test", "test")):
        report, out, folder = _sweep(runs, capfd, *options)
        assert report["split"] == split and report["n_rows"] == sizes[split]
        assert out == (folder / "robustness.md").read_text()
        assert out.startswith(f"# Robustness on the {words} split") and f"{sizes[split]} {words} samples" in out
        figure = robustness_figure(report)
        assert figure._suptitle.get_text().startswith(f"Robustness on the {words} split")
        assert figure.axes[0].get_ylabel() == f"{words} accuracy"
