"""``qlit cv --workers 2`` against serial ``qlit cv``: do parallel folds pay off on one machine?

Three ways to run the same cv, each a whole ``python -m qlit cv`` in a scratch folder (start-up, imports, data,
every fold, the summary and figures), interleaved round by round so that a slow spell of a shared machine hits all
of them alike:

* serial: one fold after another in the command's own process;
* forked: ``--workers 2``, the folds in two processes forked from the command after its imports;
* Ray: ``--workers 2 --address local``, the folds as tasks on a Ray the command starts and stops.

Prints the median wall times, the speed-ups over serial, and whether every model's mean accuracy is identical.

    python benchmarks/parallel_folds.py                    # configs/genomic.yaml, 3 rounds (about 12 minutes)
    python benchmarks/parallel_folds.py --rounds 5 --no-ray
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import DEFAULT_CONFIG, cv_seconds_and_accuracy  # noqa: E402

RUNS = {
    "serial": (),
    "forked": ("--workers=2",),
    "ray": ("--workers=2", "--address=local"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs on every run")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray run")
    args = parser.parse_args()
    runs = {k: v for k, v in RUNS.items() if not (args.no_ray and k == "ray")}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread per fold, the same on every side
    times: dict[str, list[float]] = {name: [] for name in runs}
    accuracies: dict[str, dict[str, float]] = {}
    for round_ in range(args.rounds):
        for name, extra in runs.items():
            print(f"round {round_ + 1} of {args.rounds}: qlit cv, {name}", file=sys.stderr)
            seconds, means = cv_seconds_and_accuracy(args.config, env, args.epochs, extra)
            times[name].append(seconds)
            if accuracies.setdefault(name, means) != means:
                raise SystemExit(f"{name}: mean accuracies changed between rounds: {accuracies[name]} then {means}")
    serial = statistics.median(times["serial"])
    print(f"`qlit cv --config {args.config}`, {os.cpu_count()} CPU cores, {args.rounds} rounds\n")
    print("| run | median wall time (s) | rounds (s) | speed-up over serial |")
    print("|---|---|---|---|")
    for name, extra in runs.items():
        median = statistics.median(times[name])
        label = f"`qlit cv {' '.join(extra)}`" if extra else "`qlit cv` (serial)"
        rounds = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"| {label} | {median:.1f} | {rounds} | {serial / median:.2f}x |")
    same = all(accuracies[name] == accuracies["serial"] for name in runs)
    print("\nmean test accuracy, every model: " + ("identical in every run" if same else "DIFFERS"))
    for name in runs:
        print(f"  {name}: " + ", ".join(f"{model} {acc:.4f}" for model, acc in accuracies[name].items()))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
