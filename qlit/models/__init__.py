"""Networks (plain `nn.Module`) and the LightningModule that trains them."""

from qlit.models.classifier import HybridClassifier
from qlit.models.hybrid import HybridNet
from qlit.models.quantum_layer import QuantumLayer
from qlit.models.statevector import StatevectorCircuit

__all__ = ["HybridClassifier", "HybridNet", "QuantumLayer", "StatevectorCircuit"]
