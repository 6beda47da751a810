"""Concurrent runs, signals and the one-line promise, checked on real ``qlit`` processes as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qlit.cli import main
from qlit.io.checkpoints import load_checkpoint
from tests.conftest import CONFIGS, QUICK
from tests.forked import user_environment

IRIS = str(CONFIGS / "iris.yaml")


def qlit(*args: str) -> list[str]:
    return [sys.executable, "-m", "qlit", *args, *QUICK]


def test_runs_started_together_never_share_a_folder(in_tmp_path: Path, qlit_processes):
    cv = ["cv", "--config", IRIS, "--data.num_folds=2", "--trainer.max_epochs=1", "--tuned_baselines=false"]
    # the fits as a user runs them, output to files: no progress bar unless asked for
    fit = ["fit", "--config", IRIS, "--trainer.max_epochs=1"]
    commands = [[*cv, "--seed_everything=1", *QUICK], [*cv, "--seed_everything=2", *QUICK], fit, fit]
    # forked from one interpreter, the four start within milliseconds of each other: a closer race than four
    # fresh interpreters, whose imports end seconds apart
    results = [qlit_processes.wait(pid) for pid in [qlit_processes.start(c) for c in commands]]
    for done in results:
        assert done.returncode == 0, done.stderr[-3000:]
    for done in results[2:]:
        # nothing on stderr (before: Lightning's "fewer batches than the logging interval" warning), and only
        # qlit's own lines on stdout, each on a line of its own (before: progress bars with carriage returns)
        assert done.stderr == "", done.stderr[-2000:]
        assert "\r" not in done.stdout and all(line.startswith("qlit:") for line in done.stdout.splitlines()), \
            done.stdout[-2000:]

    experiment = Path("lightning_logs/iris")
    summaries = [json.loads(p.read_text()) for p in sorted(experiment.rglob("cv_summary.json"))]
    assert len(summaries) == 2
    assert {s["seed_everything"] for s in summaries} == {1, 2}
    assert {s["experiment"] for s in summaries} == {"iris", "iris/cv_1"}
    checkpoints = [f["best_checkpoint"] for s in summaries for f in s["folds"]]
    assert len(set(checkpoints)) == 4, "two cv runs tested the same checkpoint"
    for summary in summaries:
        for fold in summary["folds"]:  # each fold's checkpoint holds the seed of the run that tested it
            saved = load_checkpoint(fold["best_checkpoint"])
            assert saved["hyper_parameters"] and Path(fold["best_checkpoint"]).parts[2] != "version_0"

    fits = sorted(p.name for p in experiment.glob("version_*"))
    assert fits == ["version_0", "version_1"]
    for name in fits:
        assert sorted(p.name for p in (experiment / name / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
        assert [p.name for p in (experiment / name).glob("config*.yaml")] == ["config.yaml"]


def test_folders_and_files_claimed_at_the_same_instant_all_differ(in_tmp_path: Path):
    """Processes released at once claim run folders and cv files of one experiment: each is won by one process.

    The runs above race with their whole start-ups, which leave the claims themselves milliseconds apart (a claim
    that checked for a folder before making it passed there); here six processes claim in tight loops from the
    same instant.
    """
    from qlit.io.runs import claim_file, claim_version

    experiment = in_tmp_path / "lightning_logs" / "iris"
    start, release = os.pipe()
    children = []
    for child in range(6):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; it reports through its file and exit status only
            code = 1
            try:
                os.close(release)
                os.read(start, 1)  # returns when the parent closes the pipe: every child at once
                folders = [claim_version(experiment).name for _ in range(20)]
                files = [k for k in range(60) if claim_file(experiment / f"cv_{k}" / "cv_config.yaml")]
                (in_tmp_path / f"claims_{child}.json").write_text(json.dumps([folders, files]))
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    os.close(start)
    os.close(release)
    assert all(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0 for pid in children)
    claims = [json.loads((in_tmp_path / f"claims_{child}.json").read_text()) for child in range(6)]
    folders = [name for mine, _ in claims for name in mine]
    files = [k for _, mine in claims for k in mine]
    assert len(set(folders)) == len(folders) == 120, "two processes claimed the same run folder"
    assert sorted(p.name for p in experiment.glob("version_*")) == sorted(folders)
    assert sorted(files) == list(range(60)), "a cv file was claimed twice, or by nobody"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["fit", "--config", IRIS, "--data.num_folds=60"], ["num_folds=60", "setosa"]),  # the README's example
        (["fit", "--config", IRIS, "--data.val_fraction=nan"], ["data.val_fraction", "nan"]),
        (["test", "--config", IRIS, "--ckpt_path=best"], ["no best.ckpt"]),
    ],
    ids=["found-after-parsing", "parser", "checkpoint"],
)
def test_an_error_is_the_only_line_on_the_real_stderr(in_tmp_path: Path, qlit_processes, args: list[str],
                                                     words: list[str]):
    done = qlit_processes.run([*args, *QUICK])
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("qlit: error: "), done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert done.stdout.strip() == ""
    assert not Path("lightning_logs").exists()


def test_an_unusable_log_folder_is_one_line(capfd):
    Path("lightning_logs").write_text("not a folder\n")
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", IRIS, "--trainer.max_epochs=1", *QUICK])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(err) == 1 and "lightning_logs is a file" in err[0], err
    assert Path("lightning_logs").read_text() == "not a folder\n"


SIGNAL_HELPER = '''
import os
import signal

import lightning as L


class TermAfterTraining(L.Callback):
    """SIGTERM once training has finished, as the INT8 export is about to run."""

    def on_train_end(self, trainer, pl_module):
        os.kill(os.getpid(), signal.SIGTERM)
'''


def test_sigterm_after_the_last_epoch_still_exits_143(in_tmp_path: Path, monkeypatch, capfd):
    (in_tmp_path / "qlit_term.py").write_text(SIGNAL_HELPER)
    monkeypatch.syspath_prepend(str(in_tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", IRIS, "--trainer.max_epochs=1", "--trainer.callbacks+=qlit_term.TermAfterTraining",
              *QUICK])
    assert exit_info.value.code == 143
    assert "SIGTERM after" in capfd.readouterr().err
    run_dir = Path("lightning_logs/iris/version_0")
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert not list(run_dir.glob("model_int8*")), "the export was cut short: no half-written artifact"


def test_ctrl_c_while_starting_is_one_line(in_tmp_path: Path):
    proc = subprocess.Popen(qlit("fit", "--config", IRIS), env=user_environment(), stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # inside the imports of torch, Lightning and PennyLane
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "qlit: " in err


SWALLOWED_CTRL_C = """
import os, signal, sys, time


class SwallowsCtrlC:
    \"\"\"As a package with a bare ``except:`` around an optional import: Ctrl-C lands there and is caught.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name == "lightning":
            sys.meta_path.remove(self)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except BaseException:
                pass
        return None


sys.meta_path.insert(0, SwallowsCtrlC())
sys.argv = ["qlit", *sys.argv[1:]]
from qlit.__main__ import run
run()
"""


def test_ctrl_c_caught_by_an_imported_package_still_stops_qlit(in_tmp_path: Path):
    """The case the timed test above can miss under load: the interrupt lands where an import swallows it."""
    proc = subprocess.run([sys.executable, "-c", SWALLOWED_CTRL_C, "fit", "--config", IRIS, "--trainer.max_epochs=1",
                           *QUICK], env=user_environment(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr.strip() == "qlit: interrupted (Ctrl-C) while starting"
    assert not Path("lightning_logs").exists(), "nothing is trained or written after a Ctrl-C"


def test_small_circuits_train_on_one_thread_unless_told(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        main(["fit", "--config", IRIS, "--trainer.max_epochs=1", *QUICK])
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("QLIT_NUM_THREADS", "2")
        main(["fit", "--config", IRIS, "--trainer.max_epochs=1", *QUICK])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_read_only_log_folder_is_one_line(in_tmp_path: Path):
    from tests.test_bad_input import _as_reader_without_root_powers

    logs = Path("lightning_logs")
    (logs / "iris").mkdir(parents=True)
    logs.chmod(0o555)
    (logs / "iris").chmod(0o555)
    try:
        prefix = _as_reader_without_root_powers()
        probe = subprocess.run([*prefix, sys.executable, "-c", "open('lightning_logs/iris/x', 'w')"],
                               capture_output=True)
        assert probe.returncode != 0, "the folder must really be read-only"
        done = subprocess.run([*prefix, *qlit("fit", "--config", IRIS, "--trainer.max_epochs=1")],
                              env=user_environment(), capture_output=True, text=True, timeout=120)
    finally:
        (logs / "iris").chmod(0o755)
        logs.chmod(0o755)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "lightning_logs/iris" in lines[0] and "ermission denied" in lines[0], lines[0]
    assert [p.name for p in (logs / "iris").iterdir()] == []


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 400 KiB tmpfs mounted at ``tmp_path/disk``: a disk that really fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield disk
    finally:
        os.chdir(tmp_path)  # the test's cwd is inside; a busy mount would not unmount
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_one_line_and_leaves_no_empty_files(small_disk: Path, monkeypatch, qlit_processes):
    monkeypatch.chdir(small_disk)
    main(["fit", "--config", IRIS, "--trainer.max_epochs=1", *QUICK])  # a run to resume, with room to spare
    run_dir = small_disk / "lightning_logs" / "iris" / "version_0"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 2048))

    done = qlit_processes.run(["fit", "--config", IRIS, "--trainer.max_epochs=3", "--ckpt_path=last", *QUICK])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "no space left on the device" in lines[0]
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before, "a file was changed, or a half-written one left behind"


def _in_fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_config_file_error_is_told_before_torch_and_lightning_are_imported(in_tmp_path: Path):
    """Seconds of imports for a typo in a file name: the config file alone shows the error."""
    (in_tmp_path / "broken.yaml").write_text("model:\n  n_qubits: 4\nmodel:\n  n_layers: 2\n")
    for config, words in (("nope.yaml", "config nope.yaml does not exist"), ("broken.yaml", "duplicate key 'model'")):
        done = _in_fresh_python(
            "import sys\n"
            f"sys.argv = ['qlit', 'fit', '--config', {config!r}]\n"
            "from qlit.__main__ import run\n"
            "try:\n    run()\nexcept SystemExit as exit:\n"
            "    print(exit.code, *(name in sys.modules for name in ('torch', 'lightning')))\n"
        )
        assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith("qlit: error: config") and words in line
