"""qlit: train hybrid quantum–classical classifiers with PyTorch Lightning."""

__version__ = "0.1.0"
