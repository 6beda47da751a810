"""Qiskit backends behind `QuantumLayer`: qlit's circuit on IBM devices and their fake stand-ins, for evaluation.

``backend="qiskit:fake_manila"`` (any fake device of ``qiskit_ibm_runtime.fake_provider``) or
``"qiskit:ibm_<name>"`` (a real IBM device, with the token from ``QISKIT_IBM_TOKEN``). The circuit of
`qlit.models.circuit.gate_sequence` becomes one parameterised Qiskit circuit (wire ``i`` is Qiskit's qubit ``i`` and
clbit ``i``, so its ⟨Z⟩ is read from bit ``i`` of Qiskit's little-endian bitstrings), transpiled once to the device
(`generate_preset_pass_manager`, fixed ``seed_transpiler``), and every row is one set of parameter values of a
SamplerV2 job: a test set is one job per ``chunk`` rows (`qlit.models.qiskit_jobs` runs them). Qiskit is imported
only here, and only when such a backend is used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qlit.errors import QlitError
from qlit.models.circuit import CircuitSpec, gate_sequence, init_weights, weight_shape
from qlit.models.qiskit_jobs import Chunk, JobRecord, JobScheduler, Usage, chunk_key

PREFIX = "qiskit:"
INSTALL = "pip install 'qlit[qiskit]'"
TOKEN_ENV = "QISKIT_IBM_TOKEN"
MAX_SHOTS = 100_000  # IBM's limit of shots per circuit
MAX_CHUNK = 10_000  # rows (parameter sets) per job
FAKE_TIMEOUT_S = 600.0
REAL_TIMEOUT_S = 8 * 3600.0


def is_qiskit(backend: Any) -> bool:
    """Whether ``backend`` names a Qiskit device (``qiskit:<name>``)."""
    return isinstance(backend, str) and backend.startswith(PREFIX)


@dataclass(frozen=True)
class HardwareOptions:
    """How rows go to a device.

    Attributes:
        shots: Measurements per row (each ⟨Z⟩ is estimated from them), 1 to `MAX_SHOTS`.
        chunk: Rows per job, 1 to `MAX_CHUNK`.
        seed: ``seed_transpiler``, and the simulator's seed on a fake device (plus the chunk's first row).
        optimization_level: The preset pass manager's level, 0 to 3.
        max_in_flight: Jobs submitted and not yet finished, at most.
        timeout_s: Seconds a job may take, queue included, before it is cancelled and tried again; None: 600 on a
            fake device, `REAL_TIMEOUT_S` on a real one (an IBM queue can take hours).
        retries: Further tries of a failed or timed-out job.
        backoff_s: Wait before the first retry, doubled for each next one.
    """

    shots: int = 4096
    chunk: int = 256
    seed: int = 1234
    optimization_level: int = 1
    max_in_flight: int = 2
    timeout_s: float | None = None
    retries: int = 3
    backoff_s: float = 2.0

    def check(self) -> HardwareOptions:
        """Raise a one-line `QlitError` for a count out of range; return self."""
        for name, value, top in (("hardware_shots", self.shots, MAX_SHOTS), ("hardware_chunk", self.chunk, MAX_CHUNK)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise QlitError(f"{name} must be an integer from 1 to {top}, got {value!r}")
        if self.optimization_level not in (0, 1, 2, 3):
            raise QlitError(f"optimization_level must be 0, 1, 2 or 3, got {self.optimization_level!r}")
        bad_timeout = self.timeout_s is not None and not self.timeout_s > 0
        if self.max_in_flight < 1 or self.retries < 0 or bad_timeout or self.backoff_s < 0:
            raise QlitError("max_in_flight must be >= 1, retries >= 0, timeout_s > 0 and backoff_s >= 0")
        return self


def _qiskit() -> Any:
    try:
        import qiskit
        import qiskit_ibm_runtime  # noqa: F401
    except ImportError:
        raise QlitError(f"Qiskit backends need the qiskit extra: {INSTALL}") from None
    return qiskit


def resolve_backend(name: str) -> Any:
    """The Qiskit backend ``qiskit:<name>`` names: a fake device, or a real one through the IBM runtime service."""
    _qiskit()
    device = name.removeprefix(PREFIX)
    if device.startswith("fake_"):
        from qiskit_ibm_runtime import fake_provider

        wanted = device.removeprefix("fake_").replace("_", "")
        devices = [c for c in dir(fake_provider) if c.startswith("Fake") and "Provider" not in c]
        found = sorted((not c.endswith("V2"), c) for c in devices if c[4:].removesuffix("V2").lower() == wanted)
        if not found:
            raise QlitError(f"unknown Qiskit fake backend {name!r}: qiskit_ibm_runtime.fake_provider has none")
        return getattr(fake_provider, found[0][1])()
    if device.startswith("ibm_"):
        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise QlitError(f"backend {name!r} is a real IBM device: set {TOKEN_ENV} to your IBM Quantum API token")
        from qiskit_ibm_runtime import QiskitRuntimeService

        try:
            return QiskitRuntimeService(channel="ibm_quantum_platform", token=token).backend(device)
        except Exception as err:  # the service raises its own errors for a bad token or an unknown device
            raise QlitError(f"cannot open IBM backend {device!r}: {str(err).splitlines()[0][:200]}") from err
    raise QlitError(f"unknown Qiskit backend {name!r}: use qiskit:fake_<device> (e.g. qiskit:fake_manila) or qiskit:ibm_<device>")  # noqa: E501


def check_primitives(backend: Any, name: str) -> None:
    """Raise a one-line `QlitError` unless ``backend`` takes SamplerV2 jobs: a BackendV2 whose target measures."""
    from qiskit.providers import BackendV2

    target = getattr(backend, "target", None) if isinstance(backend, BackendV2) else None
    if target is None or "measure" not in target.operation_names:
        kind = type(backend).__name__
        raise QlitError(
            f"backend {name!r} ({kind}) does not support the V2 primitives qlit sends its jobs through: SamplerV2 "
            "needs a BackendV2 whose target has measure"
        )


def pass_manager(backend: Any, options: HardwareOptions) -> Any:
    """The preset pass manager that transpiles qlit's circuits for ``backend`` (a fixed ``seed_transpiler``)."""
    from qiskit.transpiler import generate_preset_pass_manager

    return generate_preset_pass_manager(
        optimization_level=options.optimization_level, backend=backend, seed_transpiler=options.seed
    )


def qiskit_circuit(spec: CircuitSpec, measure: bool = True) -> tuple[Any, Any, Any]:
    """``(circuit, inputs, weights)``: ``spec``'s circuit in Qiskit, with ParameterVectors for inputs and weights.

    Gates come from `gate_sequence` with Qiskit's gates of the same convention (``RX(θ) = exp(-iθX/2)``, ``cx`` of
    ``(control, target)``); wire ``i`` is qubit ``i``. ``weights`` is the weights tensor flattened in C order.
    """
    from qiskit.circuit import ParameterVector, QuantumCircuit

    n = spec.n_qubits
    inputs = ParameterVector("x", n)
    weights = ParameterVector("w", math.prod(weight_shape(n, spec.n_layers, spec.ansatz)))
    sources = [*inputs, *weights]
    circuit = QuantumCircuit(n, n if measure else 0, name="qlit")
    for gate in gate_sequence(n, spec.n_layers, spec.ansatz, spec.embedding):
        if gate.name == "CNOT":
            circuit.cx(*gate.wires)
        else:
            getattr(circuit, gate.name.lower())(sources[gate.source], gate.wires[0])
    if measure:
        circuit.measure(range(n), range(n))
    return circuit, inputs, weights


def z_expectations(bits: np.ndarray, n_qubits: int) -> np.ndarray:
    """⟨Z⟩ of clbits ``0..n-1`` from a BitArray's packed bytes ``(rows, shots, bytes)`` (big-endian, clbit 0 last)."""
    unpacked = np.unpackbits(bits, axis=-1)[..., ::-1][..., :n_qubits]
    return 1.0 - 2.0 * unpacked.mean(axis=-2)


class QiskitRunner:
    """``spec``'s circuit on a Qiskit device: transpiled once, rows sent as parameter arrays in chunked jobs.

    Attributes:
        folder: Where job ids and results are recorded (None: nowhere); set per run by the classifier.
        usage: Circuits, jobs and shots used since the last `reset_usage`.
        wrap: ``wrap(sampler_run) -> sampler_run``, for tests that fail or stall chosen jobs.
        take_up: ``take_up(job_id) -> job or None`` in place of the IBM service's lookup of an unfinished job.
    """

    def __init__(self, spec: CircuitSpec, options: HardwareOptions | None = None) -> None:
        self.spec = spec
        self.options = (options or HardwareOptions()).check()
        self.backend = resolve_backend(spec.backend)
        self.name = spec.backend.removeprefix(PREFIX)
        check_primitives(self.backend, self.name)
        device_qubits = self.backend.num_qubits
        if spec.n_qubits > device_qubits:
            raise QlitError(f"n_qubits={spec.n_qubits} does not fit {self.name}, which has {device_qubits} qubits")
        self.circuit, self.inputs, self.weights = qiskit_circuit(spec)
        self._isa: Any = None
        self.folder: Path | None = None
        self.usage = Usage()
        self.wrap: Any = None
        self.take_up: Any = None

    def isa(self) -> Any:
        """The circuit in the device's native gates and layout, transpiled on first use only."""
        if self._isa is None:
            self._isa = pass_manager(self.backend, self.options).run(self.circuit)
            column = {p: i for i, p in enumerate([*self.inputs, *self.weights])}
            self._columns = [column[p] for p in self._isa.parameters]
        return self._isa

    def fingerprint(self) -> str:
        s, o = self.spec, self.options
        fields = (self.name, s.n_qubits, s.n_layers, s.ansatz, s.embedding, o.shots, o.seed, o.optimization_level)
        return "|".join(map(str, fields))

    def expectations(self, angles: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """⟨Z⟩ of every wire ``(rows, n_qubits)`` for angle rows ``(rows, n_qubits)`` under the flat ``weights``."""
        angles = np.asarray(angles, dtype=np.float64).reshape(-1, self.spec.n_qubits)
        if len(angles) == 0:
            return np.zeros((0, self.spec.n_qubits))
        flat = np.asarray(weights, dtype=np.float64).reshape(1, -1)
        values = np.concatenate([angles, np.repeat(flat, len(angles), axis=0)], axis=1)
        size, fingerprint = self.options.chunk, self.fingerprint()
        chunks = [
            Chunk(start, values[start : start + size], chunk_key(fingerprint, values[start : start + size]))
            for start in range(0, len(values), size)
        ]
        o, fake = self.options, self.name.startswith("fake_")
        timeout = o.timeout_s if o.timeout_s is not None else FAKE_TIMEOUT_S if fake else REAL_TIMEOUT_S
        scheduler = JobScheduler(
            self._submit, self._collect, JobRecord(self.folder), o.shots, max_in_flight=o.max_in_flight,
            timeout_s=timeout, retries=o.retries, backoff_s=o.backoff_s, poll_s=0.05 if fake else 2.0,
            device_time=None if fake else _device_seconds, retrieve=self._retrieve,
        )  # fmt: skip
        try:
            return np.concatenate(scheduler.run(chunks))
        finally:
            for name in ("circuits", "jobs", "shots", "reused_chunks", "taken_up", "retries"):
                setattr(self.usage, name, getattr(self.usage, name) + getattr(scheduler.usage, name))
            self.usage.add_device_time(scheduler.usage.device_seconds)
            self.usage.job_ids += scheduler.usage.job_ids

    def reset_usage(self) -> None:
        self.usage = Usage()

    def _submit(self, chunk: Chunk, attempt: int) -> Any:
        from qiskit_ibm_runtime import SamplerV2

        isa = self.isa()
        sampler = SamplerV2(mode=self.backend)
        sampler.options.default_shots = self.options.shots
        if self.name.startswith("fake_"):
            sampler.options.simulator.seed_simulator = self.options.seed + chunk.start
        run = sampler.run if self.wrap is None else self.wrap(sampler.run)
        return run([(isa, chunk.values[:, self._columns])])

    def _retrieve(self, job_id: str) -> Any:
        """The job ``job_id`` that a killed run left on the device, from the IBM service; None for a fake device,
        whose jobs ran in the killed process (``take_up`` lets tests stand in for the service)."""
        if self.take_up is not None:
            return self.take_up(job_id)
        service = getattr(self.backend, "service", None)
        return None if self.name.startswith("fake_") or service is None else service.job(job_id)

    def _collect(self, job: Any) -> np.ndarray:
        bits = job.result()[0].join_data()
        return z_expectations(bits.array.reshape(-1, bits.num_shots, bits.array.shape[-1]), self.spec.n_qubits)


def _device_seconds(job: Any) -> float | None:
    """Quantum seconds the IBM service billed for ``job``; None where the backend does not say (fake devices)."""
    usage = getattr(job, "usage", None)
    if not callable(usage):
        return None
    try:
        seconds = usage()
    except Exception:  # noqa: BLE001  (a report the service cannot give is left out, not fatal)
        return None
    return float(seconds) if isinstance(seconds, (int, float)) else None


class HardwareCircuit(nn.Module):
    """`QuantumLayer`'s circuit on a Qiskit device: the same ``weights`` parameter as the simulators, evaluation only.

    Rows that `prefetch` sent ahead (a whole test set, in chunked jobs) are answered from its results; any other row
    is sent when it comes. ``collecting`` (a list) makes `forward` only note its rows and return zeros.
    """

    def __init__(self, spec: CircuitSpec, options: HardwareOptions | None = None) -> None:
        super().__init__()
        if spec.noise or spec.shots is not None:
            raise QlitError(
                f"backend {spec.backend!r} is a device with its own noise: drop --model.noise and --model.shots "
                "(its shots are --model.hardware_shots)"
            )
        self.spec = spec
        self.n_qubits = spec.n_qubits
        self.weights = nn.Parameter(init_weights(torch.empty(weight_shape(spec.n_qubits, spec.n_layers, spec.ansatz)), spec.init_std))  # noqa: E501
        self.runner = QiskitRunner(spec, options)
        self.collecting: list[torch.Tensor] | None = None
        self._known: dict[bytes, np.ndarray] = {}
        self._known_weights = b""

    def configure(self, options: HardwareOptions) -> None:
        """Use ``options`` (checked) from now on."""
        self.runner.options = options.check()

    def _rows(self, inputs: torch.Tensor) -> np.ndarray:
        return inputs.detach().reshape(-1, self.n_qubits).to("cpu", torch.float64).numpy()

    def prefetch(self, inputs: torch.Tensor) -> None:
        """Send every row of ``inputs`` now, in as few jobs as the chunk size allows."""
        weights = self._weights()
        rows = np.unique(self._rows(inputs), axis=0)
        rows = np.array([r for r in rows if r.tobytes() not in self._known]).reshape(-1, self.n_qubits)
        values = self.runner.expectations(rows, weights)
        self._known.update((r.tobytes(), v) for r, v in zip(rows, values))

    def _weights(self) -> np.ndarray:
        """The flat weights; results noted under other weights (a checkpoint loaded since) are forgotten."""
        flat = self.weights.detach().to("cpu", torch.float64).numpy().reshape(-1)
        if flat.tobytes() != self._known_weights:
            self._known, self._known_weights = {}, flat.tobytes()
        return flat

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise QlitError(f"backend {self.spec.backend!r} evaluates trained models only: train on a simulator")
        if self.collecting is not None:
            self.collecting.append(inputs.detach().reshape(-1, self.n_qubits).cpu())
            return torch.zeros_like(inputs)
        rows, weights = self._rows(inputs), self._weights()
        missing = [i for i, r in enumerate(rows) if r.tobytes() not in self._known]
        if missing:
            fresh = self.runner.expectations(rows[missing], weights)
            self._known.update((rows[i].tobytes(), v) for i, v in zip(missing, fresh))
        out = np.stack([self._known[r.tobytes()] for r in rows]) if len(rows) else np.zeros((0, self.n_qubits))
        return torch.from_numpy(out).to(inputs.device, inputs.dtype).reshape(inputs.shape)
