"""What a loaded checkpoint must hold before a model is built from it, or a fit resumes from it.

Plain hyperparameters of a `HybridClassifier` that agree with the weights' shapes, finite weights and
preprocessing, data-module state of the right form, and (to resume) a training state that fits the model. A
crafted or damaged file fails here, in one line naming the file and the value at fault, not inside the model.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch

from qlit.errors import QlitError
from qlit.models.circuit import ANSATZES, check_circuit, weight_shape
from qlit.models.classifier import HybridClassifier

# What a HybridClassifier's hyperparameters must be, so that a crafted file fails here and not in the model.
_INT_MINIMUMS = {"in_features": 1, "num_classes": 2, "n_qubits": 1, "n_layers": 1, "lr_patience": 0}
_STRINGS = ("ansatz", "embedding", "backend", "diff_method", "core")
_NUMBERS = ("lr", "weight_decay", "lr_factor", "init_std")
ARCHITECTURE = ("in_features", "num_classes", "n_qubits", "n_layers", "ansatz", "core")
_PREPROCESSING = ("scale_mean", "scale_std", "pca_mean", "pca_components")
_NOT_RESUMABLE = "so training cannot resume from it (it can still be tested, validated, predicted or loaded)"


def check_checkpoint_content(
    checkpoint: dict[str, Any], path: Path, resume: bool, known_keys_only: bool = True
) -> None:
    """Raise a `QlitError` unless ``checkpoint`` is a well-formed, finite qlit checkpoint.

    Runs before anything is built from the file: its hyperparameters must be plain values that agree
    with the shapes of its weights (so a crafted ``n_qubits`` cannot make the model allocate), its
    weights and saved preprocessing finite (a NaN would turn every score into NaN) with every scale
    positive, and, to ``resume`` training, its optimizer, scheduler and loop state present and sound.

    Args:
        checkpoint: As from `load_checkpoint`.
        path: The file, for the message.
        resume: ``qlit fit --ckpt_path``: the training state is needed too.
        known_keys_only: Refuse hyperparameters `HybridClassifier` does not take, as the CLI would fail on
            them (`qlit.load_model` ignores them).

    Raises:
        QlitError: one line naming ``path`` and what is wrong with it.
    """
    path = Path(path)
    hparams = check_hyperparameters(checkpoint.get("hyper_parameters"), path, known_keys_only=known_keys_only)
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise QlitError(f"{path} is not a Lightning checkpoint: it has no state_dict")
    check_tensors(state, path, "weights")
    check_weight_shapes({k: tuple(v.shape) for k, v in state.items()}, hparams, path)
    for key, value in checkpoint.items():
        if isinstance(value, dict) and "preprocessing" in value:
            check_datamodule_state(value, path, hparams, where=key)
    if resume:
        _check_training_state(checkpoint, path)


def check_hyperparameters(hparams: Any, path: Path, known_keys_only: bool = False) -> dict[str, Any]:
    """Raise a `QlitError` unless ``hparams`` are a `HybridClassifier`'s hyperparameters of sound types.

    Args:
        hparams: ``checkpoint["hyper_parameters"]`` (or an INT8 artifact's).
        path: The file, for the message.
        known_keys_only: Refuse keys `HybridClassifier` does not take (the CLI would fail on them).

    Returns:
        ``hparams``.
    """
    if hparams is None:
        raise QlitError(f"{path} has no hyper_parameters, so the model it holds is unknown (not saved by qlit?)")
    if not isinstance(hparams, dict):
        raise QlitError(f"{path}: hyper_parameters is a {type(hparams).__name__}, not a dictionary")
    bad_key = next((key for key in hparams if not isinstance(key, str)), None)
    if bad_key is not None:
        raise QlitError(f"{path}: hyper_parameters has a key {bad_key!r} that is not a name")
    missing = [key for key in ARCHITECTURE if key not in hparams]
    if missing:
        raise QlitError(f"{path}: hyper_parameters lack {', '.join(missing)}, so the model it holds is unknown")
    if known_keys_only:
        accepted = set(inspect.signature(HybridClassifier.__init__).parameters)
        unknown = sorted(key for key in hparams if key not in accepted and not key.startswith("_"))
        if unknown:
            raise QlitError(f"{path}: hyper_parameters has {unknown[0]!r}, which qlit's HybridClassifier does not take")
    for key, minimum in _INT_MINIMUMS.items():
        if key in hparams and not (_is_int(hparams[key]) and hparams[key] >= minimum):
            raise QlitError(f"{path}: hyper_parameters {key}={hparams[key]!r} is not an integer >= {minimum}")
    for key in _STRINGS:
        if key in hparams and not isinstance(hparams[key], str):
            raise QlitError(f"{path}: hyper_parameters {key}={hparams[key]!r} is not a string")
    for key in _NUMBERS:
        value = hparams.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise QlitError(f"{path}: hyper_parameters {key}={value!r} is not a finite number")
    names = hparams.get("class_names")
    if names is not None:
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise QlitError(f"{path}: hyper_parameters class_names={names!r} is not a list of names")
        if len(names) != hparams["num_classes"]:
            raise QlitError(
                f"{path}: hyper_parameters name {len(names)} classes but num_classes={hparams['num_classes']}"
            )
    return hparams


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def expected_weight_shapes(hparams: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes of the `HybridClassifier` these (checked) hyperparameters build.

    Computed, not built: a crafted width must fail before anything is allocated. It mirrors
    `qlit.models.HybridNet`'s layers; a test compares it with real models of every kind.
    """
    n, out = hparams["n_qubits"], 1 if hparams["num_classes"] == 2 else hparams["num_classes"]
    shapes = {"net.pre.weight": (n, hparams["in_features"]), "net.pre.bias": (n,)}
    if hparams["core"] == "classical":
        shapes |= {"net.core.0.weight": (n, n), "net.core.0.bias": (n,)}
    else:
        shapes["net.core.circuit.weights"] = tuple(weight_shape(n, hparams["n_layers"], hparams["ansatz"]))
    return shapes | {"net.post.weight": (out, n), "net.post.bias": (out,)}


def check_weight_shapes(shapes: dict[str, tuple[int, ...]], hparams: dict[str, Any], path: Path) -> None:
    """Raise a `QlitError` unless the stored weights have the shapes the hyperparameters call for."""
    core, ansatz = hparams["core"], hparams["ansatz"]
    if core not in ("quantum", "classical"):
        raise QlitError(f"{path}: hyper_parameters core={core!r} is neither 'quantum' nor 'classical'")
    if ansatz not in ANSATZES:
        raise QlitError(f"{path}: hyper_parameters ansatz={ansatz!r} is not one of {', '.join(ANSATZES)}")
    expected = expected_weight_shapes(hparams)
    sizes = ", ".join(f"{key}={hparams[key]}" for key in ("in_features", "num_classes", "n_qubits", "n_layers"))
    for key, shape in expected.items():
        if key not in shapes:
            raise QlitError(f"{path}: its weights lack {key}, which its hyper_parameters ({sizes}) call for")
        if tuple(shapes[key]) != shape:
            raise QlitError(
                f"{path}: {key} has shape {tuple(shapes[key])} but its hyper_parameters ({sizes}) call for {shape}"
            )
    n_qubits, n_layers, embedding = hparams["n_qubits"], hparams["n_layers"], hparams.get("embedding", "X")
    try:  # after the shapes: the sizes are now those of tensors the file really holds
        check_circuit(n_qubits, n_layers, ansatz, embedding, simulated=core == "quantum")
    except QlitError as err:
        raise QlitError(f"{path}: hyper_parameters: {err}") from None
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise QlitError(f"{path}: its weights hold {extra[0]}, which a model with its hyper_parameters lacks")


def check_tensors(tensors: Any, path: Path, what: str) -> None:
    """Raise a `QlitError` unless ``tensors`` maps names to tensors whose values are all finite."""
    if not isinstance(tensors, dict):
        raise QlitError(f"{path}: its {what} are a {type(tensors).__name__}, not a dictionary of tensors")
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise QlitError(f"{path}: its {what} hold {key!r} = {type(value).__name__}, not a tensor")
        bad = _first_non_finite(value)
        if bad is not None:
            raise QlitError(
                f"{path}: {key} in its {what} holds {bad}, so every output computed from it would be {bad} "
                "(train again, or use an earlier checkpoint)"
            )


def _first_non_finite(value: torch.Tensor) -> str | None:
    if not (value.is_floating_point() or value.is_complex()):
        return None
    finite = torch.isfinite(value)
    if bool(finite.all()):
        return None
    return str(value[~finite].flatten()[0].item())


def check_datamodule_state(state: Any, path: Path, hparams: dict[str, Any] | None, where: str) -> None:
    """Raise a `QlitError` unless a saved data-module state holds sound preprocessing and class names.

    The preprocessing tensors must be finite, of matching shapes, with every ``scale_std`` > 0, and
    produce as many features as the model (``hparams["in_features"]``) takes.

    Args:
        state: ``checkpoint[<DataModuleClassName>]`` or an INT8 artifact's ``datamodule``.
        path: The file, for the message.
        hparams: The checked hyperparameters, or ``None`` to skip the comparison with the model.
        where: The state's name in the file, for the message.
    """
    if not isinstance(state, dict):
        raise QlitError(f"{path}: {where} is a {type(state).__name__}, not a data module's saved state")
    pre = state.get("preprocessing")
    if not isinstance(pre, dict):
        raise QlitError(f"{path}: {where} holds no fitted preprocessing (was it saved by a qlit data module?)")
    check_tensors(pre, path, "saved preprocessing")
    unknown = sorted(set(pre) - set(_PREPROCESSING))
    missing = [key for key in ("scale_mean", "scale_std") if key not in pre]
    if "pca_mean" in pre or "pca_components" in pre:
        missing += [key for key in ("pca_mean", "pca_components") if key not in pre]
    if unknown or missing:
        problem = f"lacks {missing[0]}" if missing else f"holds {unknown[0]!r}, which qlit does not know"
        raise QlitError(f"{path}: saved preprocessing {problem}")
    ndims = {"scale_mean": 1, "scale_std": 1, "pca_mean": 1, "pca_components": 2}
    for key, tensor in pre.items():
        if tensor.ndim != ndims[key] or tensor.numel() == 0 or not tensor.dtype.is_floating_point:
            raise QlitError(
                f"{path}: saved preprocessing {key} is a {tensor.dtype} tensor of shape {tuple(tensor.shape)}, "
                f"not a non-empty {ndims[key]}-D float one"
            )
    width = pre["scale_mean"].numel()
    if pre["scale_std"].numel() != width:
        count = pre["scale_std"].numel()
        raise QlitError(f"{path}: saved preprocessing has {width} scale_mean values but {count} scale_std")
    low = pre["scale_std"] <= 0
    if bool(low.any()):
        i = int(low.nonzero()[0, 0])
        raise QlitError(
            f"{path}: saved preprocessing scale_std of feature {i} is {pre['scale_std'][i].item()}; a scale must be > 0"
        )
    raw = width
    if "pca_components" in pre:
        components, mean = pre["pca_components"], pre["pca_mean"]
        raw = mean.numel()
        if tuple(components.shape) != (width, raw):
            raise QlitError(
                f"{path}: saved preprocessing pca_components has shape {tuple(components.shape)}, "
                f"expected ({width}, {raw}) from scale_mean and pca_mean"
            )
    saved_raw = state.get("raw_features", raw)
    if not _is_int(saved_raw) or saved_raw != raw:
        raise QlitError(f"{path}: {where} says raw_features={saved_raw!r}, but its preprocessing takes {raw} columns")
    names = state.get("class_names")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise QlitError(f"{path}: {where} class_names={names!r} is not a list of class names")
    if hparams is None:
        return
    if width != hparams["in_features"]:
        raise QlitError(
            f"{path}: saved preprocessing gives {width} features, the model takes in_features={hparams['in_features']}"
        )
    if len(names) != hparams["num_classes"]:
        raise QlitError(
            f"{path}: {where} names {len(names)} classes, the model has num_classes={hparams['num_classes']}"
        )


def _check_training_state(checkpoint: dict[str, Any], path: Path) -> None:
    """What ``fit --ckpt_path`` restores besides the weights: optimizer, schedulers, loops."""
    if "optimizer_states" not in checkpoint or "lr_schedulers" not in checkpoint:
        raise QlitError(f"{path} holds weights only, no optimizer state, {_NOT_RESUMABLE}")
    problem = _optimizer_problem(checkpoint["optimizer_states"])
    schedulers = checkpoint["lr_schedulers"]
    if problem is None and (not isinstance(schedulers, list) or not all(isinstance(s, dict) for s in schedulers)):
        problem = f"its lr_schedulers are a {type(schedulers).__name__}, not a list of scheduler states"
    loops = checkpoint.get("loops")
    if problem is None and not (isinstance(loops, dict) and isinstance(loops.get("fit_loop"), dict)):
        problem = "it has no training-loop state (loops.fit_loop)"
    if problem is not None:
        raise QlitError(f"{path}: {problem}, {_NOT_RESUMABLE}")


def _optimizer_problem(states: Any) -> str | None:
    if not isinstance(states, list) or not states:
        return "its optimizer_states are not a list of optimizer states"
    for state in states:
        if not isinstance(state, dict) or not isinstance(state.get("state"), dict):
            return "its optimizer state is broken (no per-parameter state)"
        groups = state.get("param_groups")
        if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
            return "its optimizer state is broken (no parameter groups)"
        for group in groups:
            params = group.get("params")
            if not isinstance(params, list) or not all(_is_int(i) for i in params):
                return "its optimizer state is broken (a parameter group without parameter indices)"
            lr = _number(group.get("lr"))
            if lr is None or not lr >= 0 or not math.isfinite(lr):
                return f"its optimizer's learning rate is {group.get('lr')!r}, not a finite number >= 0"
        for index, values in state["state"].items():
            if not isinstance(values, dict):
                return f"its optimizer state of parameter {index!r} is broken"
            for name, value in values.items():
                number = _number(value)
                if isinstance(value, torch.Tensor):
                    bad = _first_non_finite(value)
                elif number is not None:
                    bad = None if math.isfinite(number) else str(number)
                else:
                    return f"its optimizer state {name} of parameter {index} is a {type(value).__name__}"
                if bad is not None:
                    return f"its optimizer state {name} of parameter {index} holds {bad}"
    return None


def _number(value: Any) -> float | None:
    """A plain or one-element-tensor number as a float, else ``None``."""
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 and not value.is_complex() else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def check_optimizer_fits(checkpoint: dict[str, Any], path: Path, model: torch.nn.Module) -> None:
    """Raise a `QlitError` unless the checkpoint's first optimizer state matches ``model``'s parameters.

    Torch's optimizer would take a state of the wrong shape and fail at the first step, mid-epoch.
    """
    states = checkpoint.get("optimizer_states")
    if not isinstance(states, list) or not states:
        return
    state = states[0]
    params = list(model.parameters())
    indices = [i for group in state["param_groups"] for i in group["params"]]
    if len(indices) != len(params):
        raise QlitError(
            f"{path}: its optimizer state covers {len(indices)} parameters but the model has {len(params)}, "
            f"{_NOT_RESUMABLE}"
        )
    for index, param in zip(indices, params):
        for name, value in state["state"].get(index, {}).items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and tuple(value.shape) != tuple(param.shape):
                raise QlitError(
                    f"{path}: its optimizer state {name} of parameter {index} has shape {tuple(value.shape)}, "
                    f"the parameter {tuple(param.shape)}, {_NOT_RESUMABLE}"
                )
