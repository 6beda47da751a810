"""Mixed precision: the circuit computes in float32 whatever autocast says."""

from __future__ import annotations

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from qlit.cli import main
from qlit.models import QuantumLayer, StatevectorCircuit
from tests.conftest import CONFIGS, QUICK

CASES = [("qlit", True), ("qlit", False), ("default.qubit", None)]


def _outputs_and_grads(layer: QuantumLayer, x: torch.Tensor, autocast: bool = False):
    layer.zero_grad()
    inputs = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(inputs)
    # Backward outside autocast, as Lightning runs it and PyTorch advises.
    (out.float() * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out, layer.weights.grad.clone(), inputs.grad


@pytest.mark.parametrize("backend,fused", CASES)
def test_bf16_autocast_matches_float32(backend, fused):
    torch.manual_seed(0)
    layer = QuantumLayer(4, 2, "strong", "X", backend=backend)
    if fused is not None:
        layer.circuit.fused = fused
    x = (torch.rand(16, 4) * 3 - 1.5).bfloat16()  # what tanh of a bf16 pre-net hands over under autocast
    reference = _outputs_and_grads(layer, x.float())
    out, grad_w, grad_x = _outputs_and_grads(layer, x, autocast=True)
    assert out.dtype == torch.float32  # kept in float32 under autocast; the next layer casts it down
    assert grad_x.dtype == torch.bfloat16
    assert (out - reference[0]).abs().max().item() < 1e-6
    assert (grad_w - reference[1]).abs().max().item() < 1e-6
    assert (grad_x.float() - reference[2]).abs().max().item() < 1e-2  # bf16 storage of the input's gradient


def test_circuit_alone_is_autocast_proof_and_at_least_float32():
    circuit = StatevectorCircuit(3, 2, "strong")
    x = torch.rand(5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = circuit(x)
    assert out.dtype == torch.float32 and torch.allclose(out, circuit(x), atol=1e-6)
    assert circuit(x.bfloat16()).dtype == torch.float32
    assert QuantumLayer(3, 2)(x.bfloat16()).dtype == torch.bfloat16  # outside autocast: the input's dtype


def test_fit_under_bf16_mixed(tmp_path):
    main(["fit", "--config", str(CONFIGS / "iris.yaml"), "--trainer.precision=bf16-mixed", "--trainer.max_epochs=1",
          *QUICK])
    checkpoint = tmp_path / "lightning_logs" / "iris" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["state_dict"]["net.core.circuit.weights"].dtype == torch.float32
    events = EventAccumulator(str(checkpoint.parents[1]))
    events.Reload()
    for tag in ("train_loss", "val_loss", "val_acc"):
        assert math.isfinite(events.Scalars(tag)[-1].value), tag
