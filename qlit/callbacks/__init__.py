"""Lightning callbacks qlit adds to its runs."""

from qlit.callbacks.prediction_writer import PredictionWriter
from qlit.callbacks.quantum_monitor import QuantumMonitor

__all__ = ["PredictionWriter", "QuantumMonitor"]
