import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qlit.cli import QlitCLI, main
from tests.conftest import CONFIGS, QUICK, one_line_error

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))
IRIS = str(CONFIGS / "iris.yaml")


def run(*args: str) -> None:
    main([*args, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])


def scalars(run_dir: Path) -> dict[str, list]:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_every_config_trains_a_step_and_validates(config: Path):
    if config.stem == "genotypes_plink":  # its first command writes the simulated fileset it reads
        from qlit.data.genotype_sim import write_fileset

        write_fileset("data/sim1kg/sim1kg", n_individuals=300, n_snps=2000)
    cli = QlitCLI(args=["fit", "--config", str(config), "--trainer.fast_dev_run=true", *QUICK])
    assert cli.trainer.global_step == 1
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train_loss"]) and torch.isfinite(metrics["val_loss"])
    assert 0 <= float(metrics["val_acc"]) <= 1
    assert cli.model.hparams.in_features == cli.datamodule.num_features
    assert cli.model.hparams.num_classes == len(cli.datamodule.class_names) >= 2


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: p.stem)
def test_print_config_is_a_complete_config(config: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load(config.read_text())
    assert printed["model"]["n_qubits"] == source["model"]["n_qubits"]
    assert printed["data"]["class_path"] == source["data"]["class_path"]
    assert printed["trainer"]["max_epochs"] == source["trainer"]["max_epochs"]


def test_fit_test_predict_share_one_run_folder(tmp_path: Path):
    run("fit", "--config", IRIS, "--trainer.max_epochs=2")
    run_dir = tmp_path / "lightning_logs" / "iris" / "version_0"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "config.yaml").is_file()

    tags = scalars(run_dir)
    for tag in ("train_loss", "train_acc", "val_loss", "val_acc", "lr-Adam", "quantum_grad_norm", "quantum_grad_rms"):
        assert tag in tags, tag
    assert len(tags["val_loss"]) == 2 and tags["quantum_grad_norm"][0].value > 0

    run("test", "--config", IRIS, "--ckpt_path", "best")
    assert "test_acc" in scalars(run_dir)
    tested = json.loads((run_dir / "test_summary.json").read_text())  # the number and where it came from
    assert tested["test_acc"] == pytest.approx(scalars(run_dir)["test_acc"][-1].value)
    assert tested["checkpoint"].endswith("best.ckpt")
    assert tested["provenance"]["command"] == ["qlit", "test", "--config", IRIS, "--ckpt_path", "best", *QUICK]
    assert tested["provenance"]["data"]["fold"] == 0 and len(tested["provenance"]["data"]["test_sha256"]) == 64
    assert set(tested["provenance"]["versions"]) == {"qlit", "torch", "lightning", "pennylane"}
    assert (run_dir / "config_test.yaml").is_file()
    assert not (tmp_path / "lightning_logs" / "iris" / "version_1").exists()

    run("predict", "--config", IRIS, "--ckpt_path", "best")
    with (run_dir / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20  # the test fold of 100 Iris samples
    assert set(rows[0]) == {"id", "label", "prob_setosa", "prob_versicolor"}
    assert {row["label"] for row in rows} <= {"setosa", "versicolor"}
    assert all(abs(float(r["prob_setosa"]) + float(r["prob_versicolor"]) - 1) < 1e-5 for r in rows)


def test_resume_continues_where_it_stopped(tmp_path: Path):
    run("fit", "--config", IRIS, "--trainer.max_epochs=2")
    ckpt_dir = tmp_path / "lightning_logs" / "iris" / "version_0" / "checkpoints"
    first = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert first["epoch"] == 1

    run("fit", "--config", IRIS, "--ckpt_path", "last", "--trainer.max_epochs=4")
    resumed = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert resumed["epoch"] == 3
    assert resumed["global_step"] == 2 * first["global_step"]
    assert not (tmp_path / "lightning_logs" / "iris" / "version_1").exists()
    val_steps = [event.step for event in scalars(ckpt_dir.parent)["val_loss"]]
    assert sorted(val_steps) == sorted(set(val_steps)) and len(val_steps) == 4
    assert (ckpt_dir.parent / "config.yaml").is_file() and (ckpt_dir.parent / "config_fit.yaml").is_file()


def test_quantum_weights_are_saved_and_restored(tmp_path: Path):
    run("fit", "--config", IRIS, "--trainer.max_epochs=1")
    state = torch.load(tmp_path / "lightning_logs/iris/version_0/checkpoints/last.ckpt", weights_only=True)
    weights = state["state_dict"]["net.core.circuit.weights"]
    assert weights.shape == (2, 4)
    from qlit.models import HybridClassifier

    model = HybridClassifier(**{k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")})
    model.load_state_dict(state["state_dict"])
    assert torch.equal(model.net.core.weights.detach(), weights)


def test_the_saved_config_is_what_a_checked_dump_gives(tmp_path: Path):
    """qlit's parser no longer checks a parsed config again when it writes it: the file must be the same."""
    cli = QlitCLI(args=["fit", "--config", IRIS, "--trainer.max_epochs=1", "--model.lr=0.05", *QUICK])
    saved = yaml.safe_load((tmp_path / "lightning_logs/iris/version_0/config.yaml").read_text())
    checked = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_validation=False))["fit"]
    assert saved == checked and saved["model"]["lr"] == 0.05 and saved["data"]["class_path"].endswith("IrisDataModule")
    hparams = torch.load(tmp_path / "lightning_logs/iris/version_0/checkpoints/last.ckpt", weights_only=True)
    shared = {k: v for k, v in hparams["hyper_parameters"].items() if k in checked["model"]}
    assert shared["lr"] == 0.05 and shared == {k: checked["model"][k] for k in shared}


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--model.n_qubitz=3"], "n_qubitz"),
        (["--data.init_args.classes=[setosa,tulip]"], "tulip"),
        (["--data.init_args.fold=5"], "fold"),
        (["--model.n_qubits=0"], "n_qubits"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(args, culprit, capsys, tmp_path: Path):
    with pytest.raises(SystemExit) as exit_info:
        run("fit", "--config", IRIS, *args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qlit: error:") and culprit in err[0]
    assert not (tmp_path / "lightning_logs").exists()


def test_best_without_a_run_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("test", "--config", IRIS, "--ckpt_path", "best")
    assert exit_info.value.code == 2
    assert "no best.ckpt" in capsys.readouterr().err


OPTIONAL = ("ray", "pennylane", "pandas", "sklearn", "bed_reader", "arch", "optuna")


def test_in_process_main_prints_only_its_error_line_without_pytest_filters(in_tmp_path: Path):
    """`main(args)` with sys.argv set (as under pytest, or in a script) must not add Lightning's args warning.

    Run in a fresh interpreter, so that no warning filter of pytest's or of an earlier test applies: with
    ``-p no:warnings`` the warning reached stderr and 173 one-line-error tests failed. The same interpreter shows
    what the CLI imports to parse a ``fit`` (its parser reads every data module's options): Ray, PennyLane, pandas,
    scikit-learn and the other optional packages only come with the commands and data that use them. (Lightning
    itself imports matplotlib and scipy, so they cost qlit nothing more.)
    """
    code = (
        "import sys; sys.argv = ['script.py', 'extra']\n"
        "from qlit.cli import main\n"
        "try:\n    main(['fit', '--config', 'iris.yaml', '--model.n_qbits', '3'])\n"
        f"finally:\n    print(*sorted(n for n in {OPTIONAL!r} if n in sys.modules))\n"
    )
    (in_tmp_path / "iris.yaml").write_text((CONFIGS / "iris.yaml").read_text())
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["qlit: error: --model.n_qbits: no such option; did you mean '--model.n_qubits'?"]
    assert done.stdout.split() == [], "imported by the CLI before any command needed it"


@pytest.mark.parametrize(
    ("args", "yaml_edit", "expected"),
    [
        (["--data.init_args.clases", "[setosa, virginica]"], None,
         "--data.init_args.clases: IrisDataModule has no option 'clases'; did you mean 'classes'?"),
        (["--data.clases", "[setosa, virginica]"], None, "did you mean 'classes'?"),
        ([], ("    classes:", "    clases:"), "--data.init_args.clases: IrisDataModule has no option 'clases'"),
        (["--model.n_qbits", "3"], None, "--model.n_qbits: no such option; did you mean '--model.n_qubits'?"),
        ([], ("  n_qubits:", "  n_qbits:"), "did you mean 'model.n_qubits'?"),
        (["--trainer.max_epohcs", "3"], None, "did you mean '--trainer.max_epochs'?"),
    ],
)  # fmt: skip
def test_a_misspelt_key_is_named_with_the_closest_valid_one(args, yaml_edit, expected, capfd, in_tmp_path: Path):
    """Before: a data key gave "--data: Does not validate against any of the Union subtypes", no key, no hint."""
    config = in_tmp_path / "iris.yaml"
    text = (CONFIGS / "iris.yaml").read_text()
    if yaml_edit:
        assert yaml_edit[0] in text
        text = text.replace(yaml_edit[0], yaml_edit[1], 1)
    config.write_text(text)
    one_line_error(["fit", "--config", str(config), *args], capfd, [expected])
    assert not (in_tmp_path / "lightning_logs" / "iris").exists()


@pytest.mark.parametrize("subcommand", ["fit", "test"])
def test_help_shows_qlit_options_before_the_trainer_and_explains_ckpt_path(subcommand, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    order = [text.index(flag) for flag in ("--ckpt_path CKPT_PATH", "--model.n_qubits", "--data.help [", "--trainer CONFIG")]
    assert order == sorted(order), "qlit's options, the model and the data come before Lightning's Trainer"
    ckpt_help = text[order[0]:order[1]]
    assert "``best``" in ckpt_help and "``last``" in ckpt_help
    assert "--data.help NAME" in text[: text.index("\noptions:\n")]
    assert len(text[: order[3]].splitlines()) < 150, "the trainer's hundreds of lines come last"


def test_a_misspelt_subcommand_is_named_with_the_closest(capfd):
    one_line_error(["fitt", "--config", IRIS], capfd, ["no subcommand 'fitt'; did you mean 'fit'?"])
