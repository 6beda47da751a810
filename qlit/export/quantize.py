"""INT8 post-training quantization of a network's classical linear layers.

The weights are quantized with torchao (``quantize_`` with ``Int8WeightOnlyConfig``, symmetric,
one scale per tensor); the quantum layer is left in float. Each ``Linear(in, out)`` has its bias
folded in as an extra input column first, so one INT8 matrix ``[W | b]`` of shape ``(out, in + 1)``
and one float32 scale hold the whole layer: qlit's layers are so small (``Linear(4, 4)``,
``Linear(4, 1)``) that a float bias or a scale per output row would cost as much as the INT8
weights save.

The result is plain tensors (`Int8Linear` buffers), so a quantized model is saved and loaded with
``torch.save`` / ``torch.load(weights_only=True)`` and needs neither torchao nor pickled classes to
run. `Int8Linear` computes exactly what torchao's weight-only INT8 linear computes on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from qlit.errors import QlitError

METHOD = "torchao Int8WeightOnlyConfig, per-tensor symmetric, bias folded into the weight"


class Int8Linear(nn.Module):
    """A linear layer stored as one INT8 matrix ``[W | b]`` and one float32 scale.

    ``y = ([x, 1] @ qweight.T) * scale``: the input is multiplied by the INT8 values cast to the
    input's dtype, then rescaled, as torchao's weight-only INT8 linear does.

    Args:
        qweight: INT8 tensor ``(out_features, in_features + 1)``; the last column is the bias.
        scale: Float32 tensor with one element.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.ndim != 2 or qweight.shape[1] < 2:
            shape = tuple(qweight.shape)
            raise QlitError(f"Int8Linear needs a 2-D int8 weight with a bias column, got {qweight.dtype} {shape}")
        if scale.numel() != 1:
            raise QlitError(f"Int8Linear needs one scale per tensor, got {scale.numel()}")
        self.register_buffer("qweight", qweight.clone())
        self.register_buffer("scale", scale.detach().to(torch.float32).reshape(1, 1).clone())
        self.in_features = qweight.shape[1] - 1
        self.out_features = qweight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        flat = torch.cat([flat, flat.new_ones(flat.shape[0], 1)], dim=1)
        y = torch.mm(flat, self.qweight.t().to(flat.dtype)) * self.scale.to(flat.dtype).flatten()
        return y.reshape(*lead, self.out_features)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The float ``(weight, bias)`` this layer represents."""
        full = self.qweight.to(torch.float32) * self.scale
        return full[:, :-1], full[:, -1]

    @property
    def nbytes(self) -> int:
        """Bytes of everything the layer stores: INT8 values plus the scale."""
        return tensor_bytes(self.qweight) + tensor_bytes(self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-tensor"


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage of a tensor's elements in bytes."""
    return t.numel() * t.element_size()


def classical_linears(net: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` submodules of ``net`` by qualified name (the quantum layer has none)."""
    return {name: module for name, module in net.named_modules() if isinstance(module, nn.Linear)}


def float_linear_bytes(net: nn.Module) -> int:
    """Bytes of the weights and biases of every ``nn.Linear`` in ``net``."""
    return sum(tensor_bytes(p) for linear in classical_linears(net).values() for p in linear.parameters())


def int8_linear_bytes(net: nn.Module) -> int:
    """Bytes of every `Int8Linear` in ``net``: INT8 values and scales."""
    return sum(m.nbytes for m in net.modules() if isinstance(m, Int8Linear))


def fold_bias(linear: nn.Linear) -> nn.Linear:
    """A bias-free ``Linear(in + 1, out)`` whose weight is ``[W | b]`` (a zero column without bias)."""
    folded = nn.Linear(linear.in_features + 1, linear.out_features, bias=False)
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
    with torch.no_grad():
        folded.weight.copy_(torch.cat([linear.weight.detach().float().cpu(), bias.detach().float().cpu()[:, None]], 1))
    return folded


@contextmanager
def _quiet_import() -> Iterator[None]:
    # torchao logs a warning for every optional CUDA kernel library it cannot load on a CPU machine.
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def torchao_quantize(linears: dict[str, nn.Linear]) -> nn.ModuleDict:
    """Fold each layer's bias and quantize the results with torchao's ``quantize_``.

    Returns:
        The folded layers, keys with ``.`` replaced by ``/``, whose weights are torchao ``Int8Tensor``s.
    """
    with _quiet_import():
        from torchao.quantization import Int8WeightOnlyConfig, PerTensor, quantize_

    folded = nn.ModuleDict({name.replace(".", "/"): fold_bias(linear) for name, linear in linears.items()})
    # version=2: the plain Int8Tensor (qdata, scale). set_inductor_config=False: the default would
    # change global torch.compile settings of the training process.
    quantize_(folded, Int8WeightOnlyConfig(granularity=PerTensor(), set_inductor_config=False, version=2))
    return folded


def quantize_linears(net: nn.Module) -> dict[str, Int8Linear]:
    """INT8 versions of the classical linear layers of ``net`` (``net`` itself is not changed).

    Raises:
        QlitError: ``net`` has no ``nn.Linear`` layer.
    """
    linears = classical_linears(net)
    if not linears:
        raise QlitError(f"{type(net).__name__} has no nn.Linear layer to quantize")
    folded = torchao_quantize(linears)
    result = {}
    for name in linears:
        weight = folded[name.replace(".", "/")].weight
        zero_point = getattr(weight, "zero_point", None)
        if zero_point is not None and bool(zero_point.ne(0).any()):
            raise RuntimeError("torchao returned a non-zero zero point for symmetric quantization")
        result[name] = Int8Linear(weight.qdata.detach(), weight.scale.detach())
    return result


def swap_modules(net: nn.Module, replacements: dict[str, nn.Module]) -> nn.Module:
    """Replace submodules of ``net`` in place by qualified name; returns ``net``."""
    for name, module in replacements.items():
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        setattr(parent, attr, module)
    return net


def int8_state(layers: dict[str, Int8Linear]) -> dict[str, dict[str, torch.Tensor]]:
    """Plain tensors of INT8 layers, for saving."""
    return {name: {"qweight": layer.qweight.clone(), "scale": layer.scale.clone()} for name, layer in layers.items()}


def int8_layers_from_state(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, Int8Linear]:
    """Rebuild INT8 layers from `int8_state` output."""
    return {name: Int8Linear(tensors["qweight"], tensors["scale"]) for name, tensors in state.items()}
