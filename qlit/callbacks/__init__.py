"""Lightning callbacks qlit adds to its runs."""

from qlit.callbacks.checkpoint import RunCheckpoint
from qlit.callbacks.prediction_writer import PredictionWriter
from qlit.callbacks.quantization import Int8Quantization
from qlit.callbacks.quantum_monitor import QuantumMonitor
from qlit.callbacks.summary import RunSummary

__all__ = ["Int8Quantization", "PredictionWriter", "QuantumMonitor", "RunCheckpoint", "RunSummary"]
