"""Start-up time of the ``qlit`` command against ``python -c "import lightning"``, measured side by side.

Every command qlit runs imports torch and Lightning; the aim is that ``qlit --help`` and a one-line error from a
bad config file cost at most 10 % more than that import. The commands are run in turn (A, B, C, A, B, C, ...)
so that a drift in the machine's speed moves them all alike; the medians and their ratios to the import are printed.

Usage::

    python benchmarks/startup.py              # 5 rounds
    python benchmarks/startup.py --rounds 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 1.10


def _commands(folder: Path) -> dict[str, list[str]]:
    broken = folder / "broken.yaml"
    broken.write_text("model:\n  n_qubits: 4\nmodel:\n  n_layers: 2\n")
    qlit = [sys.executable, "-m", "qlit"]
    return {
        "import lightning": [sys.executable, "-c", "import lightning"],
        "qlit --help": [*qlit, "--help"],
        "qlit fit --help": [*qlit, "fit", "--help"],
        "config file error": [*qlit, "fit", "--config", str(broken)],
        "misspelt option": [*qlit, "fit", "--config", str(REPO / "configs" / "iris.yaml"), "--model.n_qbits", "3"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        commands = _commands(Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in commands}
        env = {k: v for k, v in os.environ.items() if k != "QLIT_DEBUG"}
        for _ in range(args.rounds + 1):  # the first round warms the file cache and is not counted
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run(command, cwd=tmp, env=env, capture_output=True, check=False)
                times[name].append(time.perf_counter() - start)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"start-up, median of {args.rounds} interleaved rounds (load average {load:.2f} at the end)")
    base = statistics.median(times["import lightning"][1:])
    for name, samples in times.items():
        median = statistics.median(samples[1:])
        ratio = median / base
        aim = "" if name in ("import lightning", "qlit fit --help", "misspelt option") else (
            f"   aim <= {TARGET:.2f}x: {'met' if ratio <= TARGET else 'missed'}"
        )
        print(f"  {name:<18} {median:6.2f} s   {ratio:5.2f}x{aim}")


if __name__ == "__main__":
    main()
