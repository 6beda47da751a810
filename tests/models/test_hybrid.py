import pytest
import torch

from qlit.errors import QlitError
from qlit.models import HybridClassifier, HybridNet, QuantumLayer
from qlit.models.classifier import LossAccuracy


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
    [({"n_qubits": 0}, "n_qubits"), ({"n_layers": 0}, "n_layers"), ({"ansatz": "ring"}, "ring"), ({"embedding": "W"}, "W")],
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
    metric = LossAccuracy(binary=num_classes == 2)
    torch.manual_seed(0)
    batches = [(torch.randn(n) if num_classes == 2 else torch.randn(n, num_classes), torch.randint(num_classes, (n,)))
               for n in (7, 3, 5)]
    losses = [torch.rand(()) for _ in batches]
    for (logits, target), loss in zip(batches, losses):
        metric.update(logits, target, loss)
    logits = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches])
    predicted = (logits > 0).long() if num_classes == 2 else logits.argmax(-1)
    values = metric.compute()
    assert values["acc"].item() == pytest.approx((predicted == target).float().mean().item())
    assert values["loss"].item() == pytest.approx(sum(l.item() * len(b[1]) for l, b in zip(losses, batches)) / 15)
    metric.reset()
    metric.update(*batches[0], losses[0])
    assert metric.compute()["loss"].item() == pytest.approx(losses[0].item())


def test_adam_uses_the_fused_kernel_on_cpu():
    optimizer = HybridClassifier(4, 2, backend="qlit").configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"]
