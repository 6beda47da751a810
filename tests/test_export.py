"""Export and reload: `qlit.load_model` on checkpoints and INT8 artifacts, the plain `.pth`, safety."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris

from qlit import load_model
from qlit.cli import main
from qlit.data import SNPDataModule
from qlit.errors import QlitError
from qlit.export import classifier_from_checkpoint
from qlit.models import HybridNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QUICK = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

SNP_ARGS = ["--data.init_args.n_individuals=150", "--data.init_args.n_snps=20", "--data.init_args.batch_size=16"]


def _write_csv(path: Path, x: np.ndarray, prefix: str) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *(f"{prefix}{j}" for j in range(x.shape[1]))])
        for i, row in enumerate(x):
            writer.writerow([f"s{i}", *(repr(float(v)) if prefix == "f" else str(int(v)) for v in row)])


def _read_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return [r[0] for r in rows[1:]], [r[1] for r in rows[1:]], np.array([[float(v) for v in r[2:]] for r in rows[1:]])


def _fit_and_predict(root: Path, name: str, epochs: int, x: np.ndarray, prefix: str, extra: list[str]) -> dict:
    """``qlit fit`` with ``configs/<name>.yaml``, then ``qlit predict`` on the raw rows ``x``."""
    config = str(CONFIGS / f"{name}.yaml")
    run_args = ["--config", config, f"--trainer.logger.init_args.save_dir={root}", *QUICK, *extra]
    main(["fit", *run_args, f"--trainer.max_epochs={epochs}"])
    new = root / f"new_{name}.csv"
    _write_csv(new, x, prefix)
    main(["predict", *run_args, "--ckpt_path", "best", "--data.predict_file", str(new)])
    run = root / name / "version_0"
    return {"run": run, "csv": new, "x": x, "predictions": run / "predictions.csv"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Short fits of both shipped configs (Iris; a small SNP set), each followed by `qlit predict` on new raw rows."""
    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        iris = load_iris().data[:100]
        genotypes = np.random.default_rng(5).integers(0, 3, size=(40, 20))
        return {
            "iris": _fit_and_predict(root, "iris", 4, iris, "f", ["--model.lr=0.05"]),
            "genomic": _fit_and_predict(root, "genomic", 3, genotypes, "snp", SNP_ARGS),
        }


FRESH = textwrap.dedent(
    """
    import csv, json, sys
    import numpy as np
    from qlit import load_model

    out = {}
    for job in json.loads(sys.argv[1]):
        with open(job["csv"], newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        x = np.array([[float(v) for v in row[1:]] for row in rows])
        for kind in ("float", "int8"):
            model = load_model(job[kind])
            out[job["name"] + "/" + kind] = {
                "labels": model.predict(x).tolist(),
                "proba": model.predict_proba(x).tolist(),
                "quantized": model.quantized,
            }
    print(json.dumps(out))
    """
)


def test_fresh_process_reproduces_qlit_predict(runs):
    jobs = [
        {
            "name": name,
            "csv": str(r["csv"]),
            "float": str(r["run"] / "checkpoints" / "best.ckpt"),
            "int8": str(r["run"] / "model_int8.pt"),
        }
        for name, r in runs.items()
    ]
    done = subprocess.run([sys.executable, "-c", FRESH, json.dumps(jobs)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for name, r in runs.items():
        ids, labels, proba = _read_predictions(r["predictions"])
        assert ids == [f"s{i}" for i in range(len(r["x"]))]
        float_, int8 = out[f"{name}/float"], out[f"{name}/int8"]
        assert not float_["quantized"] and int8["quantized"]
        # float: the same labels, and probabilities equal to the CSV's six decimals
        assert float_["labels"] == labels
        assert np.abs(np.array(float_["proba"]) - proba).max() <= 1e-6
        # INT8: probabilities move by less than the quantization error allows, and the label can
        # only differ where float's top two classes are closer than that movement
        p_float, p_int8 = np.array(float_["proba"]), np.array(int8["proba"])
        shift = np.abs(p_int8 - p_float).max()
        assert shift < 0.05, name
        top2 = np.sort(p_float, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * shift
        assert (np.array(int8["labels"])[clear] == np.array(labels)[clear]).all(), name
        assert clear.mean() >= 0.5, name  # most samples are clear, so the comparison means something


def test_loader_applies_the_training_preprocessing(runs):
    run = runs["genomic"]["run"]
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    dm = SNPDataModule(n_individuals=150, n_snps=20)
    dm.setup("fit")
    rows = dm.indices["test"]
    expected = classifier_from_checkpoint(ckpt).predict_proba(dm._dataset("test").tensors[0]).detach().numpy()
    model = load_model(run / "checkpoints" / "best.ckpt")
    assert model.raw_features == 20 and model.class_names == ["AFR", "EUR", "EAS", "SAS", "AMR"]
    proba = model.predict_proba(dm.x[rows])  # raw 0/1/2 genotypes: PCA and scaling come with the model
    np.testing.assert_array_equal(proba, expected)
    assert proba.shape == (len(rows), 5)
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-6)
    assert model.predict(dm.x[rows][:1]).tolist() == [model.class_names[int(expected[0].argmax())]]
    assert model.predict(dm.x[rows][0]).shape == (1,)  # one sample as a 1-D row


def test_int8_artifact_is_plain_tensors_with_float_circuit(runs):
    run = runs["genomic"]["run"]
    artifact = torch.load(run / "model_int8.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert set(artifact["int8_layers"]) == {"net.pre", "net.post"}
    for layer in artifact["int8_layers"].values():
        assert layer["qweight"].dtype == torch.int8 and layer["scale"].dtype == torch.float32
    circuit = artifact["float_state_dict"]["net.core.circuit.weights"]
    assert circuit.dtype == torch.float32 and torch.equal(circuit, best["state_dict"]["net.core.circuit.weights"])
    metrics = artifact["metrics"]
    assert metrics["float_linear_bytes"] / metrics["int8_linear_bytes"] >= 3
    stored = sum(t.numel() * t.element_size() for layer in artifact["int8_layers"].values() for t in layer.values())
    assert metrics["int8_linear_bytes"] == stored


def test_pth_rebuilds_the_best_float_network(runs):
    run = runs["iris"]["run"]
    hp = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]
    net = HybridNet(
        in_features=hp["in_features"], num_classes=hp["num_classes"], n_qubits=hp["n_qubits"], n_layers=hp["n_layers"],
        ansatz=hp["ansatz"], embedding=hp["embedding"], backend=hp["backend"], core=hp["core"],
    )
    net.load_state_dict(torch.load(run / "model.pth", weights_only=True))
    loaded = load_model(run / "checkpoints" / "best.ckpt")
    features = loaded.preprocessor.transform(runs["iris"]["x"])
    with torch.no_grad():
        p_versicolor = torch.sigmoid(net(features)).squeeze(-1).numpy()
    np.testing.assert_array_equal(p_versicolor, loaded.predict_proba(runs["iris"]["x"])[:, 1])


def test_backend_override_gives_the_same_predictions(runs):
    path = runs["iris"]["run"] / "checkpoints" / "best.ckpt"
    x = runs["iris"]["x"][::5]
    pennylane = load_model(path, backend="default.qubit")
    assert pennylane.model.hparams.backend == "default.qubit"
    np.testing.assert_allclose(pennylane.predict_proba(x), load_model(path).predict_proba(x), atol=1e-5)


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path("pwned"),))


def test_refuses_files_that_would_run_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _RunsCode()}, path)
    with pytest.raises(QlitError, match="refusing to load .*evil.ckpt: unpickling it would call"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()


def test_bad_files_and_features(runs, tmp_path):
    run = runs["iris"]["run"]
    with pytest.raises(QlitError, match="not found"):
        load_model(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(QlitError, match="junk.ckpt"):
        load_model(tmp_path / "junk.ckpt")
    with pytest.raises(QlitError, match="plain state_dict"):
        load_model(run / "model.pth")
    model = load_model(run / "model_int8.pt")
    with pytest.raises(QlitError, match=r"shape \(2, 3\)"):
        model.predict(np.zeros((2, 3)))
    with pytest.raises(QlitError, match="not a finite number"):
        model.predict_proba([[1.0, 2.0, float("nan"), 0.5]])
    with pytest.raises(QlitError, match="numeric"):
        model.predict([["a", "b", "c", "d"]])
