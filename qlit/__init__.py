"""qlit: train hybrid quantum–classical classifiers with PyTorch Lightning."""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qlit.export import load_model

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    # Imported on first use so that importing a light submodule (qlit.errors, ...) does not pull in torch and Lightning.
    if name == "load_model":
        from qlit.export import load_model

        return load_model
    raise AttributeError(f"module 'qlit' has no attribute {name!r}")
