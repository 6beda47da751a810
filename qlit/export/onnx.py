"""The whole trained network as one ONNX model: raw feature rows in, class probabilities out.

The graph holds the checkpoint's preprocessing (mean imputation, PCA, standardisation, computed in float64 as
`qlit.data.preprocessing.Preprocessor` does), the pre-net, the circuit in real arithmetic
(`qlit.export.onnx_circuit`), the post-net and the sigmoid or softmax. Running it needs only ONNX Runtime and
numpy: neither torch nor PennyLane. Names of the input and output, the class names and the feature names (in
column order) are JSON strings in the model's ``metadata_props``.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from qlit import __version__
from qlit.errors import QlitError
from qlit.export.onnx_circuit import CircuitNodes, GraphBuilder

INPUT = "features"
OUTPUT = "probabilities"
OPSET = 17
INSTALL = "pip install 'qlit[onnx]'"
# The classical layers' MatMul nodes, by name: what the INT8 variant quantizes (the circuit's stay float).
CLASSICAL = ("pre_matmul", "core_matmul", "post_matmul")


def onnx_modules() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or a one-line `QlitError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise QlitError(f"ONNX export needs onnx and onnxruntime ({err.name} is missing): {INSTALL}") from None
    return onnx, onnxruntime


def feature_names(dm_state: dict[str, Any], width: int, fallback: list[str] | None = None) -> list[str]:
    """Names of the raw feature columns: a table's columns, the SNP ids, ``fallback``, else ``x0``, ``x1``, …."""
    snps = dm_state.get("snps")
    for names in (dm_state.get("features"), snps.get("id") if isinstance(snps, dict) else None, fallback):
        if isinstance(names, (list, tuple)) and len(names) == width and len(set(map(str, names))) == width:
            return [str(name) for name in names]
    return [f"x{j}" for j in range(width)]


def _numpy(value: Any, dtype: Any = np.float32) -> np.ndarray:
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=dtype)


def _preprocessing(g: GraphBuilder, x: str, dm_state: dict[str, Any]) -> tuple[str, bool]:
    """Nodes from raw float32 rows to float32 features; also whether a missing value (NaN) is imputed."""
    pre = dm_state["preprocessing"]
    x = g.op("Cast", x, to=11)  # float64, as Preprocessor.transform computes
    means = dm_state.get("impute_means")
    if means is None and "snps" in dm_state:  # genotypes: a missing call is taken as the SNP's mean
        means = pre["pca_mean"]
    if means is not None:
        x = g.op("Where", g.op("IsNaN", x), g.const(_numpy(means, np.float64), "impute_means"), x)
    if "pca_components" in pre:
        centred = g.op("Sub", x, g.const(_numpy(pre["pca_mean"], np.float64), "pca_mean"))
        x = g.op("MatMul", centred, g.const(_numpy(pre["pca_components"], np.float64).T.copy(), "pca_loadings"))
    x = g.op("Sub", x, g.const(_numpy(pre["scale_mean"], np.float64), "scale_mean"))
    x = g.op("Div", x, g.const(_numpy(pre["scale_std"], np.float64), "scale_std"))
    return g.op("Cast", x, to=1), means is not None


def _linear(g: GraphBuilder, x: str, state: dict[str, Any], prefix: str, name: str) -> str:
    weight = g.const(_numpy(state[f"{prefix}.weight"]).T.copy(), f"{name}_weight")
    return g.op("Add", g.op("MatMul", x, weight, name=f"{name}_matmul"), g.const(_numpy(state[f"{prefix}.bias"])))


def build_onnx(
    hparams: dict[str, Any], state_dict: dict[str, Any], dm_state: dict[str, Any], names: list[str] | None = None
) -> Any:
    """The ONNX model of a `HybridClassifier` and its data module's fitted state.

    Args:
        hparams: The classifier's hyperparameters (``checkpoint["hyper_parameters"]``).
        state_dict: Its weights (``net.pre.weight``, ..., ``net.core.circuit.weights``).
        dm_state: The data module's checkpoint state (preprocessing, class names, imputation means, SNP ids).
        names: Raw feature names when the state holds none (see `feature_names`).

    Returns:
        An ``onnx.ModelProto``, checked.
    """
    onnx, _ = onnx_modules()
    from onnx import TensorProto, helper, numpy_helper

    state = {k.removeprefix("net."): v for k, v in state_dict.items()}
    pre = dm_state["preprocessing"]
    width = int(_numpy(pre["pca_mean"] if "pca_mean" in pre else pre["scale_mean"]).size)
    classes = [str(c) for c in (dm_state.get("class_names") or hparams.get("class_names") or [])]
    num_classes = int(hparams["num_classes"])
    if len(classes) != num_classes:
        classes = [str(i) for i in range(num_classes)]
    g = GraphBuilder(helper, numpy_helper)
    x, imputes = _preprocessing(g, INPUT, dm_state)
    angles = g.op("Mul", g.op("Tanh", _linear(g, x, state, "pre", "pre")), g.const(np.float32(math.pi / 2)))
    if hparams.get("core", "quantum") == "classical":
        core = g.op("Tanh", _linear(g, angles, state, "core.0", "core"))
    else:
        spec = [int(hparams.get("n_qubits", 4)), int(hparams.get("n_layers", 2))]
        spec += [hparams.get("ansatz", "basic"), hparams.get("embedding", "X")]
        core = CircuitNodes(g, *spec, _numpy(state["core.circuit.weights"], np.float64)).expectations(angles)
    logits = _linear(g, core, state, "post", "post")
    if num_classes == 2:
        p = g.op("Sigmoid", logits)
        g.op("Concat", g.op("Sub", g.const(np.float32(1.0)), p), p, axis=1, name=OUTPUT)
    else:
        g.op("Softmax", logits, axis=1, name=OUTPUT)
    graph = helper.make_graph(
        g.nodes, "qlit",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", num_classes])],
        g.initializers,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qlit")
    model.ir_version = 8
    meta = {
        "input_name": INPUT, "output_name": OUTPUT, "class_names": json.dumps(classes),
        "feature_names": json.dumps(feature_names(dm_state, width, names)), "imputes_missing": json.dumps(imputes),
        "qlit_version": __version__,
        "circuit": json.dumps({k: hparams.get(k) for k in ("core", "n_qubits", "n_layers", "ansatz", "embedding")}),
    }  # fmt: skip
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def quantize_int8(model: Any) -> Any:
    """ONNX Runtime's dynamic INT8 quantization of the classical layers' matmuls (the circuit stays float32)."""
    onnx, _ = onnx_modules()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [node.name for node in model.graph.node if node.output[0].startswith(CLASSICAL)]
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "float.onnx"), Path(folder, "int8.onnx")
        onnx.save(model, source)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # its advice to run ONNX Runtime's pre-processing, which these graphs need not
        try:
            quantize_dynamic(source, target, nodes_to_quantize=nodes, weight_type=QuantType.QInt8)
        finally:
            logging.disable(previous)
        quantized = onnx.load(target)
    onnx.helper.set_model_props(quantized, {**metadata(model), "quantization": "onnxruntime dynamic int8, classical"})
    return quantized


def metadata(model: Any) -> dict[str, str]:
    """A model's ``metadata_props`` as a dict of strings."""
    return {prop.key: prop.value for prop in model.metadata_props}


def session(model: Any, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session of a model (``ModelProto``, bytes or a path)."""
    _, ort = onnx_modules()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else model
    source = source if isinstance(source, bytes) else str(source)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_from_checkpoint(checkpoint: dict[str, Any], path: Path, names: list[str] | None = None) -> Any:
    """`build_onnx` of a checked Lightning checkpoint (as from `qlit.io.checkpoints.load_checkpoint`)."""
    from qlit.export.artifact import datamodule_state
    from qlit.io.checkpoint_content import check_checkpoint_content

    check_checkpoint_content(checkpoint, path, resume=False, known_keys_only=False)
    dm_state = datamodule_state(checkpoint)
    if dm_state is None:
        raise QlitError(f"{path}: holds no fitted preprocessing (was it saved by a qlit data module?)")
    return build_onnx(checkpoint["hyper_parameters"], checkpoint["state_dict"], dm_state, names)


def model_output(ckpt_path: Path, output: str | None, suffix: str = "") -> Path:
    """Where an export goes: ``output`` (refused if it exists) or a free ``model.onnx`` in the checkpoint's run."""
    if output is not None:
        path = Path(output)
        path = path.with_name(f"{path.stem}{suffix}{path.suffix}") if suffix else path
        if path.exists():
            raise QlitError(f"{path} exists; qlit does not overwrite it: choose another --output")
        if not path.parent.is_dir():
            raise QlitError(f"--output {output}: folder {path.parent} does not exist")
        return path
    from qlit.io.runs import unused_path

    run = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    return unused_path(run / f"model{suffix}.onnx")


def export_checkpoint(ckpt_path: Path, output: str | None, int8: bool, names: list[str] | None = None) -> list[Path]:
    """``qlit export``: write the checkpoint's ONNX model (and its INT8 variant); returns the files written."""
    onnx, _ = onnx_modules()
    from qlit.io.checkpoints import load_checkpoint

    model = onnx_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path, names)
    models = [(model, model_output(ckpt_path, output))]
    if int8:
        models.append((quantize_int8(model), model_output(ckpt_path, output, "_int8")))
    written = []
    for proto, path in models:
        onnx.save(proto, path)
        written.append(path)
    return written
