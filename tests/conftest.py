"""Shared fixtures: every test runs in its own temporary folder, never in the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test inside ``tmp_path`` so ``lightning_logs/`` lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


QUICK = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture
def quick_args() -> list[str]:
    """Trainer overrides that keep CLI test output short."""
    return list(QUICK)
