"""Time one training step of a hybrid network per simulation backend.

A step is forward, backward and an Adam update of ``HybridNet``: ``Linear(n, n)`` → tanh·π/2 →
circuit (``n`` qubits, 2 layers) → ``Linear(n, 1)``, binary cross-entropy on random data. Backends:

* ``qlit``: qlit's own simulator, on whichever path it picks for the size (fused unitary, matrix-product
  state or statevector layers; autograd or its own backward);
* ``default.qubit``: PennyLane's default device, ``diff_method="backprop"`` (the batch is broadcast
  through one simulation, PennyLane's fastest option at these sizes);
* ``lightning.qubit``: PennyLane Lightning, ``diff_method="adjoint"`` (one tape per sample);
* ``floor``: the classical twin (``Linear(n, n)`` + tanh in place of the circuit), the cost of
  everything but the circuit;
* hardware conditions (``--noise`` depolarizing probability, ``--shots``): ``qlit-noise`` (qlit's
  density-matrix path, exact gradients) beside ``default.mixed-noise`` (the same channels,
  ``backprop``); ``qlit-shots`` (sampled ⟨Z⟩, parameter-shift on sampled shifted circuits) beside
  ``default.qubit-shots`` (``qml.set_shots``, ``parameter-shift``, the only method PennyLane has for
  shots here); ``qlit-shots-exact`` is qlit's simulation-only shortcut (sampled values, exact gradients);
* ``qlit-before``: the statevector module of ``--before PATH`` (a copy of an older
  ``qlit/models/statevector.py``) in the same network, to show a change costs the existing paths nothing.

All backends of one size are timed interleaved in one process (step 1 of each, then step 2 of
each, ...), so a busy machine slows them alike, and each reports the median of its steps. Slow
backends get fewer steps: each stops after ``--budget`` seconds of steps once it has
``--min-repeats``, and after ten times that budget whatever the count (``lightning.qubit`` at batch
8192 takes about 25 s a step: there a warm-up step that long is kept as the one measurement).

    python benchmarks/quantum_layer.py            # full run
    python benchmarks/quantum_layer.py --quick    # fewer repeats (a few minutes)
    python benchmarks/quantum_layer.py --json     # {"rows": [{"backend", "n_qubits", "batch", "ms_per_step"}, ...]}
    python benchmarks/quantum_layer.py --sizes 4x800 \
        --backends qlit,qlit-noise,default.mixed-noise,qlit-shots,default.qubit-shots,floor
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import warnings

# Lightning ships its own OpenMP runtime. Its thread pool and torch's, both as large as the machine,
# spin against each other between steps (lightning.qubit ran 10-100x slower on 2 cores, and slowed
# the torch backends timed after it). One Lightning thread is also its fastest setting for these
# small circuits; torch gets its threads back from --threads below. Must precede the imports.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from qlit.models import HybridNet

BACKENDS = ("qlit", "default.qubit", "lightning.qubit", "floor")
CONDITIONS = ("qlit-noise", "default.mixed-noise", "qlit-shots", "qlit-shots-exact", "default.qubit-shots")
EXTRA = (*CONDITIONS, "qlit-before")
DIFF_METHODS = {
    "default.qubit": "backprop", "lightning.qubit": "adjoint", "qlit": "backprop", "default.mixed-noise": "backprop",
    "default.qubit-shots": "parameter-shift",
}
SIZES = ((4, 16), (4, 128), (4, 800), (4, 8192), (8, 256), (12, 256))
PENNYLANE = ("default.qubit", "lightning.qubit")
SLOW = (*PENNYLANE, "default.mixed-noise", "default.qubit-shots")


def circuit_options(backend: str, args: argparse.Namespace) -> dict:
    """The simulator and hardware conditions a benchmark backend name stands for."""
    device = backend.split("-")[0] if backend != "floor" and not backend.startswith("qlit") else "qlit"
    options = {"backend": device, "diff_method": DIFF_METHODS.get(backend, "backprop")}
    if backend.endswith("-noise"):
        options["noise"] = {"depolarizing": args.noise}
    if "-shots" in backend:
        options["shots"] = args.shots
        options["shot_gradient"] = "exact" if backend.endswith("-exact") else "parameter-shift"
    return options


def _statevector_module(path: str):
    spec = importlib.util.spec_from_file_location("qlit_statevector_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Runner:
    """One backend at one size: a network, an optimiser, a fixed batch and the step times so far."""

    def __init__(self, backend: str, n_qubits: int, batch: int, args: argparse.Namespace, device: torch.device) -> None:
        torch.manual_seed(0)
        core = "classical" if backend == "floor" else "quantum"
        self.net = HybridNet(
            n_qubits, 2, n_qubits=n_qubits, n_layers=args.layers, ansatz=args.ansatz, core=core,
            **circuit_options(backend, args),
        )
        if backend == "qlit-before":
            before = _statevector_module(args.before).StatevectorCircuit(n_qubits, args.layers, args.ansatz, "X")
            before.load_state_dict(self.net.core.circuit.state_dict())
            self.net.core.circuit = before
        self.net = self.net.to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01)
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, n_qubits, generator=generator).to(device)
        self.y = torch.randint(0, 2, (batch,), generator=generator).float().to(device)
        self.device = device
        self.times: list[float] = []

    def step(self) -> float:
        """One timed training step, in seconds."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad()
        logits = self.net(self.x).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, self.y)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def time_size(backends, n_qubits, batch, args, device) -> dict[str, tuple[float, int]]:
    """Median ms per step and number of timed steps for each backend at one size, interleaved."""
    runners = {name: Runner(name, n_qubits, batch, args, device) for name in backends}
    slow = 10 * args.budget
    for name, runner in runners.items():  # warm-up: first calls build devices, caches, workspaces
        for _ in range(1 if name in SLOW else 3):
            elapsed = runner.step()
        if elapsed > slow:  # start-up cost is noise next to a step this long: keep it as a measurement
            runner.times.append(elapsed)
    active = [name for name, runner in runners.items() if not runner.times]
    while active:
        for name in list(active):
            runner = runners[name]
            runner.times.append(runner.step())
            count, spent = len(runner.times), sum(runner.times)
            if count >= args.max_repeats or (count >= args.min_repeats and spent >= args.budget) or spent >= slow:
                active.remove(name)
    return {name: (statistics.median(r.times) * 1e3, len(r.times)) for name, r in runners.items()}


def targets(rows: list[dict]) -> list[dict]:
    """The issue's speed targets, evaluated on the measured rows."""
    ms = {(r["backend"], r["n_qubits"], r["batch"]): r["ms_per_step"] for r in rows}
    found = []

    def add(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        found.append({"target": name, "value": value, "goal": goal, "met": ok})

    qlit = ms.get(("qlit", 4, 800))
    for backend, factor in (("default.qubit", 5), ("lightning.qubit", 300)):
        other = ms.get((backend, 4, 800))
        ratio = other / qlit if qlit and other else None
        add(f"4 qubits, batch 800: {backend} / qlit", ratio, f">= {factor}x", None if ratio is None else ratio >= factor)
    floor = ms.get(("floor", 4, 800))
    ratio = qlit / floor if qlit and floor else None
    add("4 qubits, batch 800: qlit / floor", ratio, "<= 1.3x", None if ratio is None else ratio <= 1.3)
    for n, slow, factor in ((16, "qlit-before", 3), (20, "qlit-before", 3), (16, "default.qubit", 90)):
        ours, other = ms.get(("qlit", n, 16)), ms.get((slow, n, 16))
        ratio = other / ours if ours and other else None
        add(f"{n} qubits, batch 16: {slow} / qlit", ratio, f">= {factor}x", None if ratio is None else ratio >= factor)
    for slow, fast, factor in (("default.mixed-noise", "qlit-noise", 10), ("default.qubit-shots", "qlit-shots", None)):
        other, ours = ms.get((slow, 4, 800)), ms.get((fast, 4, 800))
        ratio = other / ours if other and ours else None
        goal = f">= {factor}x" if factor else "report"
        met = None if ratio is None or not factor else ratio >= factor
        add(f"4 qubits, batch 800: {slow} / {fast}", ratio, goal, met)
    for noisy in ("qlit-noise", "qlit-shots", "qlit-shots-exact", "qlit-before"):
        other = ms.get((noisy, 4, 800))
        ratio = other / qlit if qlit and other else None
        add(f"4 qubits, batch 800: {noisy} / qlit", ratio, "~1x" if noisy == "qlit-before" else "report", None)
    qlit12 = ms.get(("qlit", 12, 256))
    pennylane = [ms[(b, 12, 256)] for b in PENNYLANE if (b, 12, 256) in ms]
    ratio = min(pennylane) / qlit12 if qlit12 and pennylane else None
    add("12 qubits, batch 256: fastest PennyLane / qlit", ratio, ">= 4x", None if ratio is None else ratio >= 4)
    return found


def print_table(rows: list[dict], backends: list[str], header: str) -> None:
    print(header)
    print()
    sizes = sorted({(r["n_qubits"], r["batch"]) for r in rows}, key=lambda s: (s[0], s[1]))
    ms = {(r["backend"], r["n_qubits"], r["batch"]): r for r in rows}
    head = "| qubits | batch | " + " | ".join(f"{b} (ms)" for b in backends) + " | qlit / floor | fastest PennyLane / qlit |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for n, batch in sizes:
        cells = []
        for b in backends:
            r = ms.get((b, n, batch))
            cells.append(f"{r['ms_per_step']:.3g} ({r['repeats']})" if r else "–")
        qlit, floor = ms.get(("qlit", n, batch)), ms.get(("floor", n, batch))
        pl = [ms[(b, n, batch)]["ms_per_step"] for b in PENNYLANE if (b, n, batch) in ms]
        over_floor = f"{qlit['ms_per_step'] / floor['ms_per_step']:.2f}x" if qlit and floor else "–"
        speedup = f"{min(pl) / qlit['ms_per_step']:.1f}x" if qlit and pl else "–"
        print(f"| {n} | {batch} | " + " | ".join(cells) + f" | {over_floor} | {speedup} |")
    print()
    print("Median ms per training step (number of timed steps in brackets).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 1 s of steps per backend and size)")
    parser.add_argument("--json", action="store_true", help='print {"rows": [...]} instead of a table')
    parser.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {','.join(BACKENDS)}")
    parser.add_argument("--sizes", default=None, help="comma-separated QUBITSxBATCH, e.g. 4x800,12x256 (default: all)")
    parser.add_argument("--ansatz", default="basic", choices=["basic", "strong", "reupload"])
    parser.add_argument("--noise", type=float, default=0.01, help="depolarizing probability of the -noise backends")
    parser.add_argument("--shots", type=int, default=1000, help="shots of the -shots backends")
    parser.add_argument("--before", default=None, help="an older statevector.py for the qlit-before backend")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device for qlit, default.qubit and floor (lightning.qubit: cpu only)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: every core)")
    parser.add_argument("--min-repeats", type=int, default=None)
    parser.add_argument("--max-repeats", type=int, default=None)
    parser.add_argument(
        "--budget", type=float, default=None,
        help="seconds of timed steps after which a backend stops once it has --min-repeats; "
        "ten times this ends it after any number of steps (quick: 1, full: 6)",
    )
    args = parser.parse_args(argv)
    args.min_repeats = args.min_repeats or (3 if args.quick else 7)
    args.max_repeats = args.max_repeats or (300 if args.quick else 2000)
    args.budget = args.budget if args.budget is not None else (1.0 if args.quick else 6.0)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS) - set(EXTRA))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS + EXTRA)}")
    if "qlit-before" in backends and not args.before:
        parser.error("qlit-before needs --before PATH (a copy of an older qlit/models/statevector.py)")
    sizes = SIZES if args.sizes is None else [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    device = torch.device(args.device)
    if device.type != "cpu" and "lightning.qubit" in backends:
        backends.remove("lightning.qubit")
        print("lightning.qubit runs on the CPU only: left out of a GPU run", file=sys.stderr)

    warnings.filterwarnings("ignore")  # PennyLane warns about broadcasting through TorchLayer and the like
    rows = []
    for n_qubits, batch in sizes:
        result = time_size(backends, n_qubits, batch, args, device)
        for backend in backends:
            ms, repeats = result[backend]
            rows.append({"backend": backend, "n_qubits": n_qubits, "batch": batch, "ms_per_step": ms, "repeats": repeats})
        if not args.json:
            print(f"  {n_qubits} qubits, batch {batch}: " + ", ".join(f"{b} {result[b][0]:.3g} ms" for b in backends),
                  file=sys.stderr, flush=True)

    found = targets(rows)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
        where = f"CPU ({os.cpu_count()} cores{load}), {torch.get_num_threads()} torch thread(s)"
    if args.json:
        print(json.dumps({"rows": rows, "targets": found, "device": where, "ansatz": args.ansatz, "layers": args.layers}))
        return 0
    header = f"One training step, {args.ansatz} ansatz, {args.layers} layers, {where}"
    print_table(rows, backends, header)
    print()
    for t in found:
        value = "not measured" if t["value"] is None else f"{t['value']:.2f}x"
        verdict = {True: "met", False: "MISSED", None: "–"}[t["met"]]
        print(f"- {t['target']}: {value} (target {t['goal']}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
