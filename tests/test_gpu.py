"""CUDA runs of the quantum backends; every test here skips on a machine without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qlit.cli import main
from qlit.models import HybridNet, QuantumLayer, StatevectorCircuit
from tests.conftest import CONFIGS, QUICK

pytestmark = pytest.mark.gpu

IRIS = str(CONFIGS / "iris.yaml")


def _outputs_and_grads(module: torch.nn.Module, x: torch.Tensor):
    module.zero_grad()
    inputs = x.clone().requires_grad_()
    out = module(inputs)
    (out * torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).reshape(out.shape)).sum().backward()
    weights = next(p for name, p in module.named_parameters() if name.endswith("weights"))
    return out.detach().cpu(), weights.grad.detach().cpu(), inputs.grad.detach().cpu()


@pytest.mark.parametrize("n_qubits,path", [(4, "fused"), (4, "layers"), (9, "layers"), (12, "mps")])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_qlit_backend_on_cuda_matches_cpu(n_qubits, path, dtype, tol):
    torch.manual_seed(0)
    circuit = StatevectorCircuit(n_qubits, 2, "strong", "X").to(dtype)
    circuit.fused, circuit.mps = path == "fused", path == "mps"
    assert circuit.uses_mps(64) == (path == "mps")
    x = torch.rand(64, n_qubits, dtype=dtype) * 3
    on_cpu = _outputs_and_grads(circuit, x)
    circuit.cuda()  # after a CPU call: the cached constants must follow the move
    assert all(b.is_cuda for b in circuit.buffers())
    on_gpu = _outputs_and_grads(circuit, x.cuda())
    for ours, theirs in zip(on_gpu, on_cpu):
        assert torch.allclose(ours, theirs, atol=tol), (ours - theirs).abs().max()


def test_default_qubit_on_cuda_matches_cpu():
    torch.manual_seed(0)
    layer = QuantumLayer(4, 2, "strong", "X", backend="default.qubit", diff_method="backprop")
    x = torch.rand(16, 4) * 3
    on_cpu = _outputs_and_grads(layer, x)
    on_gpu = _outputs_and_grads(layer.cuda(), x.cuda())
    for ours, theirs in zip(on_gpu, on_cpu):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_hybrid_net_trains_on_cuda():
    torch.manual_seed(0)
    net = HybridNet(4, 2, backend="qlit").cuda()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    x = torch.randn(128, 4, device="cuda")
    y = (x[:, 0] > 0).float()
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(-1), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("backend", ["qlit", "default.qubit"])
def test_fit_with_gpu_accelerator(tmp_path: Path, backend: str):
    main(["fit", "--config", IRIS, "--trainer.accelerator=gpu", "--trainer.max_epochs=2", f"--model.backend={backend}",
          *QUICK])
    checkpoint = tmp_path / "lightning_logs" / "iris" / "version_0" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert any(key.endswith("circuit.weights") for key in state)


@pytest.mark.parametrize("backend,fused", [("qlit", True), ("qlit", False), ("default.qubit", None)])
def test_float16_autocast_on_cuda_matches_float32(backend, fused):
    torch.manual_seed(0)
    layer = QuantumLayer(4, 2, "strong", "X", backend=backend).cuda()
    if fused is not None:
        layer.circuit.fused = fused
    x = (torch.rand(32, 4, device="cuda") * 3 - 1.5).half()  # what a float16 pre-net hands over
    reference = _outputs_and_grads(layer, x.float())
    with torch.autocast("cuda", dtype=torch.float16):
        inputs = x.clone().requires_grad_()
        out = layer(inputs)
    assert out.dtype == torch.float32
    layer.zero_grad()
    (out * torch.linspace(-1, 1, out.numel(), device="cuda").reshape(out.shape)).sum().backward()  # outside autocast
    assert (out.detach().cpu() - reference[0]).abs().max().item() < 1e-5
    assert (layer.weights.grad.cpu() - reference[1]).abs().max().item() < 1e-5


@pytest.mark.parametrize("backend", ["qlit", "default.qubit"])
def test_fit_with_16_mixed_precision(tmp_path: Path, backend: str):
    main(["fit", "--config", IRIS, "--trainer.accelerator=gpu", "--trainer.precision=16-mixed",
          "--trainer.max_epochs=1", f"--model.backend={backend}", *QUICK])
    checkpoint = tmp_path / "lightning_logs" / "iris" / "version_0" / "checkpoints" / "last.ckpt"
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]["net.core.circuit.weights"]
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()
