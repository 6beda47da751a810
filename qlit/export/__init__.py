"""Trained models outside training: the INT8 format, and building or reloading models from files."""

from qlit.export.artifact import (
    Predictor,
    classifier_from_checkpoint,
    classifier_from_hparams,
    classifier_from_int8,
    int8_artifact,
    load_model,
)

__all__ = [
    "Predictor",
    "classifier_from_checkpoint",
    "classifier_from_hparams",
    "classifier_from_int8",
    "int8_artifact",
    "load_model",
]
