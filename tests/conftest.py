"""Shared fixtures: every test runs in its own temporary folder, never in the repository."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


# The longest modules, longest first (their test-seconds in a full run: 180 down to 23). Under xdist
# (`--dist loadscope --no-loadscope-reorder`, see pyproject.toml) whole modules are dealt to the workers in this
# order, each worker taking the next module as it finishes one: the long ones first, so that no worker ends alone
# on one. (xdist's own order, most tests first, dealt the long modules of few tests last: DDP, resume, Ray cluster.)
LONG_MODULES = (
    "test_hardening.py", "test_tune.py", "test_bad_input.py", "test_cv.py", "test_ray.py", "test_ddp.py",
    "test_cli.py", "test_predict.py", "test_checkpoint_content.py", "test_ray_cluster.py", "test_equity.py",
    "test_statevector.py", "test_resume.py", "test_tabular.py", "test_plink.py", "test_honest.py", "test_serve.py",
    "test_qiskit.py", "test_claims.py", "test_docs.py", "test_export.py", "test_noise.py", "test_forked_workers.py",
    "test_robustness.py",
)  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's own order is kept
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


@pytest.fixture(scope="session")
def qlit_processes(tmp_path_factory: pytest.TempPathFactory):
    """Real ``qlit`` processes without their imports (`tests.forked.QlitProcesses`), one server per test worker."""
    from tests.forked import QlitProcesses

    server = QlitProcesses(tmp_path_factory.mktemp("forked"))
    yield server
    server.close()


QUICK = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture
def quick_args() -> list[str]:
    """Trainer overrides that keep CLI test output short."""
    return list(QUICK)


def fit_iris_one_epoch(root: Path, *extra: str) -> tuple[Path, list[str]]:
    """A one-epoch fit of ``configs/iris.yaml`` (plus ``extra``) logging under ``root``.

    Returns:
        Its run folder, and the args that point `qlit` at it and its best checkpoint.
    """
    from qlit.cli import main

    args = ["--config", str(CONFIGS / "iris.yaml"), *extra, f"--trainer.logger.init_args.save_dir={root}", *QUICK]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        main(["fit", *args, "--trainer.max_epochs=1"])
    return root / "iris" / "version_0", [*args, "--ckpt_path", "best"]


def one_line_error(args: list[str], capfd: pytest.CaptureFixture, words: tuple[str, ...] | list[str] = ()) -> str:
    """Run ``qlit`` in-process on a command that must fail; return its one stderr line.

    Checks what the CLI promises for bad input: exit status 2 and a single ``qlit: error:`` line on
    stderr (captured at the file descriptor, so logging handlers count too) containing each of ``words``.
    """
    from qlit.cli import main

    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *QUICK])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2
    assert len(lines) == 1 and lines[0].startswith("qlit: error: "), lines
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]
