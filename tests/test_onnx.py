"""ONNX export: the whole network (preprocessing included) runs in ONNX Runtime as it does in torch."""

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
import yaml
from sklearn.datasets import load_iris

from qlit import load_model
from qlit.cli import main
from qlit.data.preprocessing import Preprocessor
from qlit.export.onnx import build_onnx, metadata, quantize_int8, session
from qlit.models.classifier import HybridClassifier
from tests.conftest import QUICK, one_line_error

pytest.importorskip("onnxruntime")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
IRIS = str(CONFIGS / "iris.yaml")


@pytest.fixture(scope="module")
def iris(tmp_path_factory) -> dict:
    """A short Iris fit, ``qlit predict`` on raw rows, and ``qlit export --int8 true`` of its best checkpoint."""
    root = tmp_path_factory.mktemp("onnx")
    args = ["--config", IRIS, f"--trainer.logger.init_args.save_dir={root}", *QUICK]
    x = load_iris().data[:100]
    new = root / "new.csv"
    with new.open("w", newline="") as handle:
        rows = ([f"s{i}", *(repr(float(v)) for v in row)] for i, row in enumerate(x))
        csv.writer(handle).writerows([["id", "a", "b", "c", "d"], *rows])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        main(["fit", *args, "--trainer.max_epochs=4", "--model.lr=0.05"])
        main(["predict", *args, "--ckpt_path", "best", "--data.predict_file", str(new)])
        main(["export", *args, "--ckpt_path", "best", "--int8", "true"])
    run = root / "iris" / "version_0"
    return {"run": run, "args": args, "x": x, "csv": new, "root": root}


NO_TORCH = textwrap.dedent(
    """
    import csv, json, sys
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    with open(sys.argv[2], newline="") as handle:
        rows = [[float(v) for v in row[1:]] for row in list(csv.reader(handle))[1:]]
    probs = session.run([meta["output_name"]], {meta["input_name"]: np.array(rows, dtype=np.float32)})[0]
    assert "torch" not in sys.modules and "pennylane" not in sys.modules, "imported torch"
    print(json.dumps(probs.tolist()))
    """
)


def test_onnx_runtime_without_torch_agrees_with_qlit_predict(iris):
    out = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(iris["run"] / "model.onnx"), str(iris["csv"])],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    probs = np.array(json.loads(out.stdout))
    with (iris["run"] / "predictions.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    predicted = np.array([[float(v) for v in row[2:]] for row in rows])
    assert probs.shape == (100, 2)
    np.testing.assert_allclose(probs, predicted, atol=1e-5)  # the file holds 6 decimals
    exact = load_model(iris["run"] / "checkpoints" / "best.ckpt").predict_proba(iris["x"])
    np.testing.assert_allclose(probs, exact, atol=1e-5)


def test_metadata_names_inputs_outputs_classes_and_features(iris):
    import onnx

    meta = metadata(onnx.load(iris["run"] / "model.onnx"))
    assert (meta["input_name"], meta["output_name"]) == ("features", "probabilities")
    assert json.loads(meta["class_names"]) == ["setosa", "versicolor"]
    assert json.loads(meta["feature_names"]) == ["x0", "x1", "x2", "x3"]
    assert meta["qlit_version"] and json.loads(meta["circuit"])["ansatz"] == "basic"


def test_int8_variant_keeps_accuracy_and_is_a_separate_file(iris):
    float_path, int8_path = iris["run"] / "model.onnx", iris["run"] / "model_int8.onnx"
    assert int8_path.stat().st_size > 0
    labels = np.repeat([0, 1], 50)
    x = iris["x"].astype(np.float32)
    accuracy = {}
    for name, path in (("float", float_path), ("int8", int8_path)):
        probs = session(path).run(None, {"features": x})[0]
        accuracy[name] = float((probs.argmax(1) == labels).mean())
    assert accuracy["float"] > 0.9
    assert abs(accuracy["float"] - accuracy["int8"]) <= 0.01


def test_export_never_overwrites(iris, capfd):
    main(["export", *iris["args"], "--ckpt_path", "best"])
    assert (iris["run"] / "model_1.onnx").is_file()  # the default name: the next free one
    taken = iris["run"] / "model.onnx"
    before = taken.read_bytes()
    one_line_error(["export", *iris["args"], "--ckpt_path", "best", "--output", str(taken)], capfd, ["exists"])
    assert taken.read_bytes() == before


def _case(n_qubits: int, ansatz: str, embedding: str, classes: int = 2, core: str = "quantum", n_layers: int = 2,
          pca: int | None = None, impute: bool = False, snps: bool = False, raw: int | None = None,
          seed: int = 0) -> tuple[float, float]:  # fmt: skip
    """Largest |ONNX − torch| probability of a random model and preprocessing, and the ONNX probabilities' spread.

    ``pca``: raw columns projected on ``n_qubits`` components; ``impute``: a table's NaN become its means;
    ``snps``: genotypes, whose missing calls (NaN) become the PCA's SNP means; ``raw``: columns without PCA.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    width = pca or raw or n_qubits
    model = HybridClassifier(
        n_qubits if pca else width, classes, n_qubits=n_qubits, n_layers=n_layers, ansatz=ansatz,
        embedding=embedding, core=core, init_std=1.0,  # far from the identity, so every gate matters
    ).eval()  # fmt: skip
    x = rng.normal(2.0, 3.0, size=(16, width))
    prep = Preprocessor(n_components=n_qubits if pca else None).fit(x)
    dm_state = {"preprocessing": prep.state_dict(), "class_names": [f"c{i}" for i in range(classes)]}
    if impute:
        prep.impute_mean = rng.normal(size=width)
        dm_state["impute_means"] = torch.from_numpy(prep.impute_mean)
    if snps:
        prep.impute_mean = prep.state["pca_mean"].numpy()
        ids = [f"rs{j}" for j in range(width)]
        dm_state["snps"] = {"id": ids, "allele_1": ["A"] * width, "allele_2": ["G"] * width}
    if impute or snps:
        x[rng.random(x.shape) < 0.2] = np.nan
    proto = build_onnx(dict(model.hparams), model.state_dict(), dm_state)
    got = session(proto).run(None, {"features": x.astype(np.float32)})[0]
    with torch.inference_mode():
        expected = model.predict_proba(prep.transform(x)).numpy()
    assert got.shape == (16, classes) and np.isfinite(got).all()
    return float(np.abs(got - expected).max()), float(got.std(0).max())


@pytest.mark.parametrize("ansatz", ["basic", "strong", "reupload"])
@pytest.mark.parametrize("embedding", ["X", "Y", "Z"])
def test_every_ansatz_and_embedding_is_exact(ansatz, embedding):
    error, spread = _case(4, ansatz, embedding, classes=3, seed=len(ansatz))
    assert error < 1e-5
    if embedding != "Z" or ansatz == "reupload":  # Z on |0…0⟩ is a phase: the output cannot depend on the input
        assert spread > 1e-3


@pytest.mark.parametrize(
    ("n_qubits", "ansatz", "embedding"),
    [(5, "strong", "Y"), (6, "basic", "X"), (7, "reupload", "Z"), (8, "strong", "X"), (9, "reupload", "Y"),
     (10, "reupload", "X"), (11, "basic", "Y"), (12, "strong", "Z"), (12, "basic", "Y")],
)  # fmt: skip
def test_widths_up_to_12_qubits_are_exact(n_qubits, ansatz, embedding):
    """Up to 8 qubits the trained gates are folded into one matrix; wider circuits apply them gate by gate.

    Wide re-uploading circuits keep one layer: torch's gate-by-gate simulation of them, the reference, is slow.
    """
    error, _ = _case(n_qubits, ansatz, embedding, n_layers=1 if ansatz == "reupload" and n_qubits >= 10 else 2)
    assert error < 1e-5


def test_pca_imputation_genotypes_and_the_classical_twin_are_exact():
    assert _case(4, "strong", "X", pca=7, impute=True)[0] < 1e-5
    assert _case(4, "strong", "Y", pca=9, snps=True, classes=3)[0] < 1e-5
    assert _case(4, "basic", "X", raw=6, core="classical")[0] < 1e-5


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_is_exact(config):
    """Each shipped config's circuit and kind of preprocessing exports exactly, on random weights."""
    settings = yaml.safe_load((CONFIGS / config).read_text())
    model, data = settings.get("model", {}), settings["data"]
    init, n = data.get("init_args", {}), model.get("n_qubits", 4)
    error, _ = _case(
        n, model.get("ansatz", "basic"), model.get("embedding", "X"), core=model.get("core", "quantum"),
        n_layers=model.get("n_layers", 2), pca=n + 3 if init.get("n_components") else None, raw=n + 5,
        impute=init.get("impute") == "mean", snps="Plink" in data["class_path"], seed=len(config),
    )  # fmt: skip
    assert error < 1e-5


def test_int8_quantizes_only_the_classical_layers():
    torch.manual_seed(0)
    model = HybridClassifier(4, 2, n_qubits=4, init_std=1.0).eval()
    prep = Preprocessor().fit(np.random.default_rng(0).normal(size=(20, 4)))
    proto = build_onnx(dict(model.hparams), model.state_dict(), {"preprocessing": prep.state_dict()})
    quantized = quantize_int8(proto)
    integer_ops = [n for n in quantized.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeLinear")]
    assert integer_ops and not any("folded" in i for n in integer_ops for i in n.input)
    assert metadata(quantized)["class_names"] == metadata(proto)["class_names"]
