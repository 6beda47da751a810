"""Trained models outside training: build them from checkpoints, save INT8 artifacts, reload both.

Everything is read with ``torch.load(weights_only=True)``: checkpoints and artifacts hold only
tensors and primitives (hyperparameters, class names, the fitted preprocessing), so loading never
unpickles arbitrary objects and needs no config file.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qlit.data.preprocessing import Preprocessor
from qlit.errors import QlitError
from qlit.export.quantize import METHOD, int8_layers_from_state, int8_state, quantize_linears, swap_modules
from qlit.io.checkpoint_content import (
    check_checkpoint_content,
    check_datamodule_state,
    check_hyperparameters,
    check_tensors,
    check_weight_shapes,
)
from qlit.io.checkpoints import load_checkpoint
from qlit.models.classifier import HybridClassifier

INT8_FORMAT = "qlit-int8"
INT8_FORMAT_VERSION = 1


def datamodule_state(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The data module's saved state (fitted preprocessing, class names) in a Lightning checkpoint."""
    for value in checkpoint.values():
        if isinstance(value, dict) and "preprocessing" in value:
            return value
    return None


def classifier_from_hparams(
    hparams: dict[str, Any], backend: str | None = None, conditions: dict[str, Any] | None = None
) -> HybridClassifier:
    """A new `HybridClassifier` with the given hyperparameters (unknown keys are ignored).

    Args:
        hparams: ``checkpoint["hyper_parameters"]``.
        backend: Simulator to use instead of the one trained with (weights load into any backend).
        conditions: Shots and noise to run under (``shots``, ``noise``, ``shot_gradient``); exact and
            noiseless when ``None``, since a checkpoint's hyperparameters do not carry them.
    """
    accepted = set(inspect.signature(HybridClassifier.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in {**hparams, **(conditions or {})}.items() if k in accepted}
    if backend is not None:
        kwargs["backend"] = backend
    # Building a model draws random initial weights; keep the caller's random stream unchanged.
    with torch.random.fork_rng(devices=[]):
        return HybridClassifier(**kwargs)


def classifier_from_checkpoint(
    checkpoint: dict[str, Any], backend: str | None = None, conditions: dict[str, Any] | None = None
) -> HybridClassifier:
    """Rebuild the float model of a Lightning checkpoint, in eval mode on the CPU (see `classifier_from_hparams`)."""
    model = classifier_from_hparams(checkpoint["hyper_parameters"], backend, conditions)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def int8_artifact(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Quantize the classical linear layers of a checkpoint's model into a saveable INT8 artifact.

    The artifact is a dict of primitives and plain tensors: hyperparameters, the data module's
    state, the float tensors left unquantized (the circuit weights) and, per quantized layer, its
    INT8 matrix and scale.

    Args:
        checkpoint: A Lightning checkpoint of a `HybridClassifier` (as from `qlit.io.checkpoints.load_checkpoint`).
    """
    model = classifier_from_checkpoint(checkpoint)
    layers = {f"net.{name}": layer for name, layer in quantize_linears(model.net).items()}
    quantized_keys = {f"{name}.{p}" for name in layers for p in ("weight", "bias")}
    float_state = {k: v.detach().clone() for k, v in model.state_dict().items() if k not in quantized_keys}
    return {
        "format": INT8_FORMAT,
        "format_version": INT8_FORMAT_VERSION,
        "quantization": METHOD,
        "hyper_parameters": {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")},
        "datamodule": datamodule_state(checkpoint),
        "float_state_dict": float_state,
        "int8_layers": int8_state(layers),
        "metrics": {},
    }


def classifier_from_int8(
    artifact: dict[str, Any], backend: str | None = None, conditions: dict[str, Any] | None = None
) -> HybridClassifier:
    """Rebuild the INT8 model of an artifact: `Int8Linear` layers, float circuit, eval mode."""
    model = classifier_from_hparams(artifact["hyper_parameters"], backend, conditions)
    swap_modules(model, int8_layers_from_state(artifact["int8_layers"]))
    missing, unexpected = model.load_state_dict(artifact["float_state_dict"], strict=False)
    int8_keys = {f"{name}.{b}" for name in artifact["int8_layers"] for b in ("qweight", "scale")}
    missing = sorted(set(missing) - int8_keys)
    if missing or unexpected:
        raise QlitError(f"INT8 artifact does not match its model: missing {missing}, unexpected {unexpected}")
    return model.eval()


class Predictor:
    """A trained classifier with its fitted preprocessing: raw features in, labels out.

    Returned by `load_model`. ``model`` is the `HybridClassifier` (float, or with INT8 linear
    layers); ``preprocessor`` the scaler/PCA fitted on the training rows.

    Args:
        model: The classifier, in eval mode.
        preprocessor: Fitted preprocessing of raw features.
        class_names: Label names, one per class.
        raw_features: Number of raw feature columns expected.
        quantized: Whether the classical layers are INT8.
    """

    def __init__(
        self,
        model: HybridClassifier,
        preprocessor: Preprocessor,
        class_names: list[str],
        raw_features: int,
        quantized: bool,
    ) -> None:
        self.model = model
        self.preprocessor = preprocessor
        self.class_names = list(class_names)
        self.raw_features = raw_features
        self.quantized = quantized

    def _features(self, x: Any) -> torch.Tensor:
        try:
            array = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise QlitError(f"features must be numeric, got {type(x).__name__}: {err}") from None
        shape = array.shape
        if array.ndim == 1 and array.size:
            array = array[None, :]
        if array.ndim != 2 or array.shape[1] != self.raw_features:
            raise QlitError(f"features have shape {shape}, the model expects (n_samples, {self.raw_features})")
        if not np.isfinite(array).all():
            row, col = np.argwhere(~np.isfinite(array))[0]
            raise QlitError(f"features row {row}, column {col} is {array[row, col]}, not a finite number")
        return self.preprocessor.transform(array)

    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities of raw samples.

        Args:
            x: Raw features, ``(n_samples, raw_features)`` (or one sample as a 1-D row). Zero rows
                give zero rows back, as any filtered batch may be empty.

        Returns:
            Float32 array ``(n_samples, n_classes)``, columns in ``class_names`` order.
        """
        features = self._features(x)
        if len(features) == 0:
            return np.empty((0, len(self.class_names)), dtype=np.float32)
        with torch.inference_mode():
            return self.model.predict_proba(features).numpy()

    def predict(self, x: Any) -> np.ndarray:
        """Predicted label names of raw samples (the most probable class)."""
        return np.array(self.class_names)[self.predict_proba(x).argmax(axis=1)]

    def __repr__(self) -> str:
        kind = "int8" if self.quantized else "float"
        return f"Predictor({kind}, classes={self.class_names}, raw_features={self.raw_features})"


def _predictor(model: HybridClassifier, dm_state: dict[str, Any], quantized: bool) -> Predictor:
    preprocessor = Preprocessor()
    preprocessor.load_state_dict(dm_state["preprocessing"])
    raw = int(dm_state.get("raw_features", preprocessor.in_features))
    return Predictor(model, preprocessor, dm_state["class_names"], raw, quantized)


def _check_lightning_checkpoint(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    """Raise a `QlitError` unless a checkpoint can build a `Predictor`; returns its data-module state."""
    check_checkpoint_content(checkpoint, path, resume=False, known_keys_only=False)
    state = datamodule_state(checkpoint)
    if state is None:
        raise QlitError(f"{path}: holds no fitted preprocessing (was it saved by a qlit data module?)")
    return state


def _check_int8_artifact(artifact: dict[str, Any], path: Path) -> dict[str, Any]:
    """Raise a `QlitError` unless an INT8 artifact can build a `Predictor`; returns its data-module state."""
    hparams = check_hyperparameters(artifact.get("hyper_parameters"), path)
    missing = [key for key in ("float_state_dict", "int8_layers", "datamodule") if key not in artifact]
    if missing:
        raise QlitError(f"{path}: INT8 artifact lacks {missing[0]}")
    floats, layers = artifact["float_state_dict"], artifact["int8_layers"]
    check_tensors(floats, path, "float weights")
    if not isinstance(layers, dict) or not layers:
        raise QlitError(f"{path}: INT8 artifact's int8_layers are {type(layers).__name__}, not named layers")
    shapes = {key: tuple(value.shape) for key, value in floats.items()}
    for name, layer in layers.items():
        if not isinstance(name, str) or not isinstance(layer, dict) or sorted(layer) != ["qweight", "scale"]:
            raise QlitError(f"{path}: INT8 layer {name!r} is not a pair of qweight and scale tensors")
        check_tensors(layer, path, f"INT8 layer {name}")
        qweight, scale = layer["qweight"], layer["scale"]
        if qweight.dtype != torch.int8 or qweight.ndim != 2 or qweight.shape[1] < 2:
            raise QlitError(
                f"{path}: INT8 layer {name} qweight is a {qweight.dtype} tensor of shape {tuple(qweight.shape)}, "
                "not a 2-D int8 one with a bias column"
            )
        if scale.numel() != 1 or not scale.is_floating_point():
            raise QlitError(
                f"{path}: INT8 layer {name} scale is a {scale.dtype} tensor of {scale.numel()} values, not one float"
            )
        if f"{name}.weight" in shapes:
            raise QlitError(f"{path}: INT8 artifact holds {name} both as INT8 and as float weights")
        shapes |= {f"{name}.weight": (qweight.shape[0], qweight.shape[1] - 1), f"{name}.bias": (qweight.shape[0],)}
    check_weight_shapes(shapes, hparams, path)
    check_datamodule_state(artifact["datamodule"], path, hparams, "datamodule")
    return artifact["datamodule"]


def load_model(path: str | Path, backend: str | None = None) -> Predictor:
    """Load a trained model for prediction on raw features, preprocessing included.

    Works in a fresh process without the training config: a Lightning checkpoint (``.ckpt``) gives
    the float model, an INT8 artifact (``model_int8.pt``, written after ``qlit fit``) the quantized
    one. Files are read with ``torch.load(weights_only=True)``.

    Args:
        path: Checkpoint or INT8 artifact.
        backend: Simulate the circuit with this backend instead of the trained one (e.g. ``"qlit"``).

    Returns:
        A `Predictor` with ``predict(X)`` and ``predict_proba(X)``.

    Raises:
        QlitError: the file is missing, unsafe to load, or not a qlit checkpoint or artifact.
    """
    path = Path(path)
    content = load_checkpoint(path)
    if content.get("format") == INT8_FORMAT:
        version = content.get("format_version")
        if version != INT8_FORMAT_VERSION:
            raise QlitError(f"{path}: INT8 artifact format version {version!r}, this qlit reads {INT8_FORMAT_VERSION}")
        dm_state = _check_int8_artifact(content, path)
        return _predictor(_built(classifier_from_int8, content, backend, path), dm_state, quantized=True)
    if "state_dict" in content and "hyper_parameters" in content:
        dm_state = _check_lightning_checkpoint(content, path)
        return _predictor(_built(classifier_from_checkpoint, content, backend, path), dm_state, quantized=False)
    if content and all(isinstance(v, torch.Tensor) for v in content.values()):
        raise QlitError(
            f"{path}: is a plain state_dict without hyperparameters or preprocessing; load the run's "
            "checkpoints/best.ckpt or model_int8.pt instead, or rebuild HybridNet and call load_state_dict"
        )
    raise QlitError(f"{path}: not a qlit checkpoint or INT8 artifact")


def _built(build: Any, content: dict[str, Any], backend: str | None, path: Path) -> HybridClassifier:
    """``build(content, backend)``, with the file named in a refusal of its settings (e.g. ``lr=0``)."""
    try:
        return build(content, backend)
    except QlitError as err:
        raise QlitError(f"{path}: {err}") from None
