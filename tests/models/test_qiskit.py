"""Qiskit backends: the exact translation of every circuit, a fake IBM device through `qlit test` and `qlit predict`,
the job scheduler's retries, time-outs, one-line failures and resume, and the bad inputs."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("qiskit")
pytest.importorskip("qiskit_ibm_runtime")
pytest.importorskip("qiskit_aer")

from qiskit.quantum_info import SparsePauliOp, Statevector  # noqa: E402

from qlit.cli import main  # noqa: E402
from qlit.errors import QlitError  # noqa: E402
from qlit.models import QuantumLayer, StatevectorCircuit  # noqa: E402
from qlit.models import qiskit_backend as qb  # noqa: E402
from qlit.models.circuit import ANSATZES, ROTATIONS, CircuitSpec  # noqa: E402
from qlit.models.qiskit_jobs import Chunk, JobRecord, JobScheduler, chunk_key  # noqa: E402
from tests.conftest import CONFIGS, fit_iris_one_epoch

IRIS = str(CONFIGS / "iris.yaml")
HARDWARE = ["--model.hardware", "qiskit:fake_manila", "--model.hardware_shots", "1024", "--model.hardware_chunk", "8"]
TEST_ROWS = 20  # Iris setosa vs versicolor, fold 0 of 5


@pytest.mark.parametrize("ansatz", ANSATZES)
@pytest.mark.parametrize("embedding", ROTATIONS)
def test_translation_gives_qlit_expectations_exactly(ansatz, embedding):
    """Qiskit's statevector of the translated circuit has qlit's ⟨Z⟩ on every wire (qubit i is wire i)."""
    torch.manual_seed(0)
    for n in (2, 3, 4):
        spec = CircuitSpec(n, 2, ansatz, embedding)
        simulator = StatevectorCircuit(spec).double()
        with torch.no_grad():
            simulator.weights.uniform_(-np.pi, np.pi)
        x = torch.rand(3, n, dtype=torch.float64) * np.pi - np.pi / 2
        expected = simulator(x).detach().numpy()
        circuit, inputs, weights = qb.qiskit_circuit(spec, measure=False)
        flat = simulator.weights.detach().reshape(-1).tolist()
        z = [SparsePauliOp.from_sparse_list([("Z", [wire], 1)], n) for wire in range(n)]
        for row, values in zip(x.tolist(), expected):
            bound = circuit.assign_parameters({**dict(zip(inputs, row)), **dict(zip(weights, flat))})
            state = Statevector(bound)
            np.testing.assert_allclose([state.expectation_value(op).real for op in z], values, atol=1e-6)


def test_bitstrings_are_read_little_endian():
    """Clbit 0 is the last bit of Qiskit's packed bytes: one wire flipped shows on that wire only."""
    bits = np.zeros((1, 4, 1), dtype=np.uint8)
    bits[..., 0] = 0b001  # clbit 0 set in every shot
    np.testing.assert_array_equal(qb.z_expectations(bits, 3), [[-1.0, 1.0, 1.0]])


# ----------------------------------------------------------------------------------------------- the scheduler
class FakeJob:
    def __init__(self, job_id, values, fail=False, stall=False):
        self.id, self.values, self.fail, self.stall, self.cancelled = job_id, values, fail, stall, False

    def job_id(self):
        return self.id

    def done(self):
        return not self.stall

    def cancel(self):
        self.cancelled = True

    def result(self):
        if self.fail:
            raise RuntimeError(f"device error in {self.id}\nsecond line")
        return self.values


class Device:
    """Answers each row with its own values; fails or stalls the chosen (chunk start, attempt) submissions."""

    def __init__(self, fail=(), stall=(), refuse=()):
        self.fail, self.stall, self.refuse, self.submitted = set(fail), set(stall), set(refuse), []

    def submit(self, chunk, attempt):
        if (chunk.start, attempt) in self.refuse:
            raise ConnectionError("service unavailable")
        self.submitted.append((chunk.start, attempt))
        key = (chunk.start, attempt)
        return FakeJob(f"job-{chunk.start}-{attempt}", chunk.values * 2, key in self.fail, key in self.stall)


def _chunks(rows=10, size=4):
    values = np.arange(rows * 2, dtype=np.float64).reshape(rows, 2)
    return [Chunk(s, values[s : s + size], chunk_key("test", values[s : s + size])) for s in range(0, rows, size)]


def _scheduler(device, folder=None, retries=2, in_flight=2):
    return JobScheduler(
        device.submit, lambda job: job.result(), JobRecord(folder), shots=100, max_in_flight=in_flight,
        timeout_s=0.2, retries=retries, backoff_s=0.01, poll_s=0.005,
    )  # fmt: skip


def test_scheduler_retries_failures_and_time_outs_and_keeps_every_row(tmp_path):
    device = Device(fail={(4, 0)}, stall={(8, 0)}, refuse={(0, 0)})
    scheduler = _scheduler(device, tmp_path)
    out = np.concatenate(scheduler.run(_chunks()))
    np.testing.assert_array_equal(out, np.arange(20.0).reshape(10, 2) * 2)  # every row, in order, none padded
    assert scheduler.usage.retries == 3
    assert sorted(device.submitted) == [(0, 1), (4, 0), (4, 1), (8, 0), (8, 1)]
    record = json.loads((tmp_path / "jobs.json").read_text())
    assert [e["status"] for e in record.values()] == ["done"] * 3
    assert {e["start"]: e["job_ids"] for e in record.values()}[4] == ["job-4-0", "job-4-1"]
    assert scheduler.usage.jobs == 5 and scheduler.usage.shots == 100 * (4 + 4 + 4 + 2 + 2)


def test_scheduler_never_has_more_jobs_in_flight_than_allowed():
    device, most = Device(), []

    class Counting(JobScheduler):
        def _check(self, item):
            most.append(len(device.submitted) - len(done))
            out = super()._check(item)
            if out is not None:
                done.append(item)
            return out

    done: list = []
    scheduler = Counting(device.submit, lambda job: job.result(), JobRecord(None), 1, max_in_flight=2,
                         timeout_s=1, retries=0, backoff_s=0, poll_s=0)  # fmt: skip
    scheduler.run(_chunks(rows=20, size=2))
    assert max(most) == 2


def test_a_job_that_keeps_failing_fails_in_one_line_naming_it_and_a_rerun_resumes(tmp_path):
    chunks = _chunks()
    broken = Device(fail={(4, 0), (4, 1), (4, 2)})
    with pytest.raises(QlitError) as caught:
        _scheduler(broken, tmp_path).run(chunks)
    message = str(caught.value)
    assert "\n" not in message
    assert "job-4-2" in message and "rows 4-7" in message and "3 tries" in message and "device error" in message
    # the finished chunks are on disk as data; a rerun pays only for the one that failed
    assert len(list(tmp_path.glob("*.npz"))) == 2
    with np.load(next(tmp_path.glob("*.npz")), allow_pickle=False) as saved:
        assert saved["values"].shape[1] == 2
    healthy = Device()
    scheduler = _scheduler(healthy, tmp_path)
    out = np.concatenate(scheduler.run(chunks))
    np.testing.assert_array_equal(out, np.arange(20.0).reshape(10, 2) * 2)
    assert healthy.submitted == [(4, 0)]
    assert scheduler.usage.reused_chunks == 2 and scheduler.usage.jobs == 1


def test_a_stalled_job_past_its_retries_is_cancelled_and_named():
    device = Device(stall={(0, 0), (0, 1)})
    with pytest.raises(QlitError, match=r"hardware job job-0-1 \(rows 0-3\) failed after 2 tries: no result within"):
        _scheduler(device, retries=1).run(_chunks())


def _killed_with_jobs_running(folder):
    """A run stopped (as by kill) while chunks 4 and 8 were on the device: chunk 0 done, 4 and 8 still submitted."""
    device = Device(stall={(4, 0)})

    def collect(job):
        if job.id == "job-8-0":
            raise KeyboardInterrupt
        return job.result()

    scheduler = JobScheduler(device.submit, collect, JobRecord(folder), shots=100, max_in_flight=3, timeout_s=60,
                             retries=0, backoff_s=0, poll_s=0.005)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        scheduler.run(_chunks())
    return device


def test_a_rerun_takes_up_the_jobs_a_killed_run_left_running_by_their_ids(tmp_path):
    chunks = _chunks()
    _killed_with_jobs_running(tmp_path)
    record = json.loads((tmp_path / "jobs.json").read_text())
    assert sorted((e["start"], e["status"]) for e in record.values()) == [(0, "done"), (4, "submitted"),
                                                                          (8, "submitted")]
    # the service kept both jobs and they finished meanwhile: the rerun collects them and sends nothing
    service = {f"job-{c.start}-0": FakeJob(f"job-{c.start}-0", c.values * 2) for c in chunks[1:]}
    asked, device = [], Device()
    scheduler = JobScheduler(device.submit, lambda job: job.result(), JobRecord(tmp_path), shots=100,
                             retrieve=lambda job_id: asked.append(job_id) or service.get(job_id))  # fmt: skip
    out = np.concatenate(scheduler.run(chunks))
    np.testing.assert_array_equal(out, np.arange(20.0).reshape(10, 2) * 2)
    assert sorted(asked) == ["job-4-0", "job-8-0"] and device.submitted == []
    assert (scheduler.usage.taken_up, scheduler.usage.reused_chunks, scheduler.usage.jobs) == (2, 1, 0)
    assert all(e["status"] == "done" for e in json.loads((tmp_path / "jobs.json").read_text()).values())


def test_jobs_the_service_cannot_find_again_are_sent_again(tmp_path):
    _killed_with_jobs_running(tmp_path)
    device = Device()
    scheduler = JobScheduler(device.submit, lambda job: job.result(), JobRecord(tmp_path), shots=100,
                             retrieve=lambda job_id: None)  # fmt: skip
    np.testing.assert_array_equal(np.concatenate(scheduler.run(_chunks())), np.arange(20.0).reshape(10, 2) * 2)
    assert sorted(device.submitted) == [(4, 0), (8, 0)] and scheduler.usage.taken_up == 0


# ------------------------------------------------------------------------------------------ a fake IBM device
def test_runner_on_a_fake_device_sends_one_job_per_chunk_and_retries_a_failed_one():
    runner = qb.QiskitRunner(CircuitSpec(2, 1, "basic", "X", backend="qiskit:fake_manila"),
                             qb.HardwareOptions(shots=512, chunk=2, backoff_s=0.01))  # fmt: skip
    calls = []

    def wrap(run):
        def failing_once(pubs):
            calls.append(len(pubs[0][1]))
            if len(calls) == 1:
                raise RuntimeError("queue full")
            return run(pubs)

        return failing_once

    runner.wrap = wrap
    angles = np.array([[0.0, 0.0], [np.pi, 0.0], [np.pi, np.pi], [0.0, 0.0], [np.pi, 0.0]])
    out = runner.expectations(angles, np.zeros(2))
    # RX(π) on wire 0 then CNOT(0, 1): |11>, both ⟨Z⟩ near -1; RX(π) on both: wire 1 back to |0>
    np.testing.assert_allclose(out, [[1, 1], [-1, -1], [-1, 1], [1, 1], [-1, -1]], atol=0.2)
    assert sorted(calls) == [1, 2, 2, 2] and runner.usage.jobs == 3 and runner.usage.retries == 1
    assert runner.usage.shots == 5 * 512 and runner.usage.circuits == 5


def test_a_fake_device_job_left_running_is_taken_up_and_gives_the_uninterrupted_result(tmp_path):
    """Through the real runner and Aer: a run killed while a job ran; the rerun collects that job, sends nothing."""
    spec = CircuitSpec(2, 1, "basic", "X", backend="qiskit:fake_manila")
    options = qb.HardwareOptions(shots=256, chunk=2, max_in_flight=1)  # chunk 0 finishes before chunk 1 is sent
    angles, weights = np.array([[0.1, 0.2], [np.pi, 0.0], [0.5, -0.5], [1.0, 2.0]]), np.array([0.3, -0.2])
    expected = qb.QiskitRunner(spec, options).expectations(angles, weights)
    jobs, sent = {}, []

    def wrap(run):
        def keeping(pubs):
            job = run(pubs)
            jobs[job.job_id()] = job
            sent.append(job.job_id())
            return job

        return keeping

    first = qb.QiskitRunner(spec, options)
    first.folder, first.wrap = tmp_path, wrap
    collect = first._collect

    def killed_at_the_second_job(job):
        if len(sent) == 2 and job.job_id() == sent[1]:
            raise KeyboardInterrupt
        return collect(job)

    first._collect = killed_at_the_second_job
    with pytest.raises(KeyboardInterrupt):
        first.expectations(angles, weights)
    rerun = qb.QiskitRunner(spec, options)
    rerun.folder, rerun.wrap, rerun.take_up = tmp_path, wrap, jobs.get
    sent.clear()
    np.testing.assert_array_equal(rerun.expectations(angles, weights), expected)
    assert sent == [] and rerun.usage.taken_up == 1 and rerun.usage.reused_chunks == 1 and rerun.usage.jobs == 0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A one-epoch Iris fit; its run folder and the args that point `qlit` at it."""
    return fit_iris_one_epoch(tmp_path_factory.mktemp("qiskit"))


def test_qlit_test_on_a_fake_device_sends_a_job_per_chunk_reports_the_cost_and_resumes(run, capsys):
    run_dir, args = run
    main(["test", *args, *HARDWARE])
    err = capsys.readouterr().err
    jobs = -(-TEST_ROWS // 8)
    assert f"qlit: hardware fake_manila: {TEST_ROWS} circuits in {jobs} jobs, {TEST_ROWS * 1024} shots" in err
    summary = json.loads((run_dir / "hardware_test.json").read_text())
    assert (summary["circuits"], summary["jobs"], summary["shots"]) == (TEST_ROWS, jobs, TEST_ROWS * 1024)
    assert len(summary["job_ids"]) == jobs
    record = json.loads((run_dir / "hardware" / "jobs.json").read_text())
    record = {k: e for k, e in record.items() if e["job_ids"][-1] in summary["job_ids"]}
    assert all(e["status"] == "done" for e in record.values())
    assert sorted(e["rows"] for e in record.values()) == sorted([8] * (TEST_ROWS // 8) + [TEST_ROWS % 8])
    assert not [p for p in (run_dir / "hardware").iterdir() if p.suffix not in (".json", ".npz")]
    first = json.loads((run_dir / "test_summary.json").read_text())
    # the same command again pays for nothing: every chunk's result is in the run folder
    main(["test", *args, *HARDWARE])
    err = capsys.readouterr().err
    assert f"0 circuits in 0 jobs, 0 shots, {jobs} finished jobs reused" in err
    assert json.loads((run_dir / "test_summary.json").read_text()) == first


def test_qlit_predict_on_a_fake_device(run, capsys):
    run_dir, args = run
    main(["predict", *args, *HARDWARE, "--model.hardware_chunk", "256"])
    err = capsys.readouterr().err
    assert "qlit: hardware fake_manila:" in err and "predict" in (run_dir / "hardware_predict.json").read_text()
    summary = json.loads((run_dir / "hardware_predict.json").read_text())
    assert summary["jobs"] <= 1 and summary["circuits"] + summary["reused_jobs"] > 0


def test_qlit_robustness_on_a_fake_device_scores_the_rows_there_beside_qlits_prediction(run, capsys):
    run_dir, args = run
    grid = ["--noise_levels=[0]", "--shots=[null]"]
    main(["robustness", *args, *HARDWARE, *grid])
    captured = capsys.readouterr()
    report = json.loads((run_dir / "robustness" / "robustness.json").read_text())
    device = report["device"]
    assert device["backend"] == "qiskit:fake_manila" and device["shots"] == 1024
    assert 0 <= device["acc"] <= 1 and 0 <= device["predicted_acc"] <= 1
    rows = report["n_rows"]  # the validation rows: the split the grid scored
    assert device["usage"]["circuits"] + 8 * device["usage"]["reused_jobs"] >= rows and device["usage"]["jobs"] <= -(
        -rows // 8)
    assert "On the device fake_manila (1024 shots a row, once)" in captured.out
    assert "qlit: hardware fake_manila:" in captured.err and "robustness.json" in captured.err
    # the same sweep again pays for nothing: its jobs are in the run folder's record
    main(["robustness", *args, *HARDWARE, *grid])
    again = json.loads((run_dir / "robustness_1" / "robustness.json").read_text())["device"]
    assert again["usage"]["jobs"] == 0 and (again["acc"], again["predicted_acc"]) == (device["acc"],
                                                                                     device["predicted_acc"])


def test_a_backend_without_the_v2_primitives_is_one_line(run, capsys, monkeypatch):
    """A BackendV2 whose target cannot measure (SamplerV2 refuses it) is named in one line before anything runs."""
    from qiskit.circuit.library import CXGate, SXGate
    from qiskit.providers import BackendV2, Options
    from qiskit.transpiler import Target

    class GatesOnly(BackendV2):
        def __init__(self):
            super().__init__(name="gates_only")
            self._target = Target(num_qubits=5)
            self._target.add_instruction(SXGate(), {(q,): None for q in range(5)})
            self._target.add_instruction(CXGate(), {(q, q + 1): None for q in range(4)})

        @property
        def target(self):
            return self._target

        @property
        def max_circuits(self):
            return None

        @classmethod
        def _default_options(cls):
            return Options()

        def run(self, run_input, **options):
            raise AssertionError("never sent")

    monkeypatch.setattr(qb, "resolve_backend", lambda name: GatesOnly())
    run_dir, args = run
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(SystemExit) as stop:
        main(["test", *args, *HARDWARE])
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("qlit: error: backend 'fake_manila' (GatesOnly) does not support the V2 primitives")
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_training_on_a_device_is_refused_in_one_line(run, capsys):
    _, args = run
    with pytest.raises(SystemExit) as stop:
        main(["fit", *args[:-2], "--trainer.max_epochs=1", "--model.hardware", "qiskit:fake_manila"])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("qlit: error: training on hardware backend 'qiskit:fake_manila' is refused")


def test_a_device_job_that_keeps_failing_stops_the_command_in_one_line_naming_it(run, capsys, monkeypatch):
    _, args = run

    @dataclass(frozen=True)
    class Quick(qb.HardwareOptions):
        backoff_s: float = 0.001
        retries: int = 1

    def broken(self, job):
        raise RuntimeError("calibration in progress")

    monkeypatch.setattr(qb, "HardwareOptions", Quick)
    monkeypatch.setattr(qb.QiskitRunner, "_collect", broken)
    with pytest.raises(SystemExit) as stop:
        main(["test", *args, *HARDWARE, "--model.hardware_chunk", "256", "--model.hardware_shots", "16"])
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"qlit: error: hardware job \S+ \(rows 0-{TEST_ROWS - 1}\) failed after 2 tries: "
        r"RuntimeError: calibration in progress; .*run the command again to resume", last
    ), last


@pytest.mark.parametrize(
    ("option", "env", "message"),
    [
        (["--model.hardware", "qiskit:fake_nowhere"], {}, "unknown Qiskit fake backend 'qiskit:fake_nowhere'"),
        (["--model.hardware", "qiskit:nowhere"], {}, "unknown Qiskit backend 'qiskit:nowhere'"),
        (["--model.hardware", "manila"], {}, "hardware must name a Qiskit device"),
        (["--model.hardware", "qiskit:fake_armonk"], {}, "n_qubits=4 does not fit fake_armonk, which has 1 qubits"),
        (["--model.hardware", "qiskit:ibm_torino"], {"QISKIT_IBM_TOKEN": None}, "set QISKIT_IBM_TOKEN"),
        ([*HARDWARE, "--model.hardware_chunk", "0"], {}, "hardware_chunk must be an integer from 1 to 10000, got 0"),
        ([*HARDWARE, "--model.hardware_shots", "1000001"], {}, "hardware_shots must be an integer from 1 to 100000"),
    ],
)
def test_bad_hardware_input_is_one_line_and_writes_nothing(run, capsys, monkeypatch, option, env, message):
    run_dir, args = run
    for name, value in env.items():
        monkeypatch.delenv(name, raising=False)
    before = sorted(run_dir.parent.rglob("*"))
    with pytest.raises(SystemExit) as stop:
        main(["test", *args, *option])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("qlit: error: ") and message in err[-1], err
    assert sorted(run_dir.parent.rglob("*")) == before


def test_without_qiskit_the_backend_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "qiskit_ibm_runtime", None)
    with pytest.raises(QlitError, match=r"pip install 'qlit\[qiskit\]'"):
        QuantumLayer(2, 1, backend="qiskit:fake_manila")


def test_the_simulators_never_import_the_qiskit_backend(monkeypatch):
    """Only a ``qiskit:`` backend imports it (what `qlit --help` imports is tests/test_hardening.py's)."""
    from qlit.models.classifier import HybridClassifier

    monkeypatch.setitem(sys.modules, "qlit.models.qiskit_backend", None)  # importing it now raises ImportError
    QuantumLayer(2, 1)
    HybridClassifier(4, 2, n_qubits=2)
    with pytest.raises(ImportError):
        QuantumLayer(2, 1, backend="qiskit:fake_manila")
