import pytest
import torch

from qlit.cli import main
from qlit.errors import QlitError
from qlit.models import HybridClassifier, HybridNet, QuantumLayer, StatevectorCircuit
from qlit.models.circuit import check_circuit, max_qubits, memory_bytes, simulation_bytes
from qlit.models.classifier import EpochMetrics
from tests.conftest import CONFIGS, QUICK


def test_circuit_weights_are_small_normal_parameters():
    layer = QuantumLayer(n_qubits=8, n_layers=3, ansatz="strong", backend="qlit")
    names = [name for name, _ in layer.named_parameters()]
    assert names == ["circuit.weights"]
    assert layer.weights.shape == (3, 8, 3)
    assert 0.03 < layer.weights.std().item() < 0.07
    assert layer.weights.abs().max().item() < 0.4


def test_weights_are_not_redrawn_between_calls():
    net = HybridNet(4, 2, backend="qlit")
    x = torch.randn(10, 4)
    assert torch.equal(net(x), net(x))


def test_every_sample_goes_through_in_one_call():
    net = HybridNet(4, 5, backend="qlit")
    calls = []
    net.core.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    logits = net(torch.randn(37, 4))
    assert logits.shape == (37, 5) and calls == [37]
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("backend", ["qlit", "default.qubit"])
def test_quantum_weights_train(backend):
    torch.manual_seed(0)
    net = HybridNet(4, 2, n_layers=1, backend=backend)
    before = net.core.weights.detach().clone()
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,)).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(-1), y)
    loss.backward()
    assert net.core.weights.grad is not None and net.core.weights.grad.abs().sum() > 0
    torch.optim.SGD(net.parameters(), lr=0.5).step()
    assert not torch.equal(before, net.core.weights.detach())


def test_state_dict_restores_circuit_weights_across_backends():
    fast = HybridNet(3, 3, n_qubits=3, ansatz="strong", backend="qlit")
    pennylane = HybridNet(3, 3, n_qubits=3, ansatz="strong", backend="default.qubit")
    assert not torch.equal(fast.core.weights, pennylane.core.weights)
    pennylane.load_state_dict(fast.state_dict())
    x = torch.randn(6, 3)
    assert torch.allclose(fast(x), pennylane(x), atol=1e-5)
    assert pennylane(x).dtype == torch.float32


def test_classical_twin_replaces_only_the_circuit():
    twin = HybridNet(4, 5, core="classical")
    assert not any(isinstance(m, QuantumLayer) for m in twin.modules())
    assert twin(torch.randn(2, 4)).shape == (2, 5)


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [({"n_qubits": 0}, "n_qubits"), ({"n_layers": 0}, "n_layers"), ({"ansatz": "ring"}, "ring"),
     ({"embedding": "W"}, "W")],
)
def test_bad_circuit_options_name_the_value(kwargs, culprit):
    with pytest.raises(QlitError, match=culprit):
        HybridNet(4, 2, **kwargs)


def test_unknown_pennylane_device_is_a_clear_error():
    with pytest.raises(QlitError, match="no.such.device"):
        QuantumLayer(backend="no.such.device")


def test_binary_and_multiclass_probabilities():
    binary = HybridClassifier(4, 2, backend="qlit")
    multi = HybridClassifier(4, 3, backend="qlit")
    x = torch.randn(5, 4)
    assert binary(x).shape == (5,) and multi(x).shape == (5, 3)
    for model in (binary, multi):
        probs = model.predict_proba(x)
        assert torch.allclose(probs.sum(-1), torch.ones(5))
    assert binary.class_names == ["0", "1"]


@pytest.mark.parametrize("num_classes", [2, 4])
def test_epoch_metrics_are_sample_weighted_means(num_classes):
    metric = EpochMetrics(num_classes)
    torch.manual_seed(0)
    sizes = [7, 3, 5] * 30  # more batches than FLUSH_EVERY: some reach torchmetrics early, the rest at compute
    assert len(sizes) > EpochMetrics.FLUSH_EVERY
    batches = [(torch.randn(n) if num_classes == 2 else torch.randn(n, num_classes), torch.randint(num_classes, (n,)))
               for n in sizes]
    losses = [torch.rand(()) for _ in batches]
    for (logits, target), loss in zip(batches, losses):
        metric.update(logits, target, loss)
    logits = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    predicted = (logits > 0).long() if num_classes == 2 else logits.argmax(-1)
    values = metric.compute()
    assert values["acc"].item() == pytest.approx((predicted == target).float().mean().item())
    expected_loss = sum(l.item() * len(b[1]) for l, b in zip(losses, batches)) / sum(sizes)
    assert values["loss"].item() == pytest.approx(expected_loss)
    metric.reset()
    assert not metric.updated
    metric.update(*batches[0], losses[0])
    assert metric.updated and metric.compute()["loss"].item() == pytest.approx(losses[0].item())


def test_binary_accuracy_reads_logits_even_when_all_lie_in_0_1():
    # torchmetrics takes floats in [0, 1] for probabilities: logits 0.3 would count as class 0.
    metric = EpochMetrics(2)
    metric.update(torch.tensor([0.3, 0.8, 0.1]), torch.tensor([1, 1, 1]), torch.tensor(0.5))
    assert metric.compute()["acc"].item() == 1.0


def test_the_fast_simulator_is_the_default_everywhere():
    assert isinstance(QuantumLayer().circuit, StatevectorCircuit)
    assert isinstance(HybridNet(4, 2).core.circuit, StatevectorCircuit)
    model = HybridClassifier(4, 2)
    assert model.hparams.backend == "qlit" and isinstance(model.net.core.circuit, StatevectorCircuit)


def test_the_width_bound_follows_memory():
    for memory in (2**30, 24 * 2**30, 128 * 2**30):
        n = max_qubits(memory)
        assert simulation_bytes(n) <= memory < simulation_bytes(n + 1)
    assert 20 <= max_qubits(memory_bytes()) < 40
    with pytest.raises(QlitError, match=r"n_qubits=40 .*8\.0 TiB.* allows n_qubits <= \d+"):
        check_circuit(40, 2, "basic", "X")
    # The classical twin only borrows the width: nothing is simulated.
    assert HybridNet(4, 2, n_qubits=40, core="classical")(torch.randn(3, 4)).shape == (3, 1)


def _cli_error(capfd, *overrides: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "iris.yaml"), *QUICK, *overrides])
    assert exit_info.value.code == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("qlit: error:")][0]


def test_too_many_qubits_is_one_line_naming_the_bound(capfd, tmp_path):
    line = _cli_error(capfd, "--model.n_qubits=40")
    assert "n_qubits=40" in line and f"n_qubits <= {max_qubits(memory_bytes())}" in line and "memory" in line
    assert not (tmp_path / "lightning_logs").exists()


def test_unknown_diff_method_is_one_line_naming_it(capfd, tmp_path):
    line = _cli_error(capfd, "--model.backend=default.qubit", "--model.diff_method=nonsense")
    assert "'nonsense'" in line and "default.qubit" in line and "parameter-shift" in line
    assert not (tmp_path / "lightning_logs").exists()
    with pytest.raises(QlitError, match="adjoint"):  # a known method this device cannot do
        QuantumLayer(backend="default.mixed", diff_method="adjoint")


def test_adam_uses_the_fused_kernel_on_cpu():
    optimizer = HybridClassifier(4, 2, backend="qlit").configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"]
