"""Wall time of ``qlit cv`` against a plain PyTorch loop with a PennyLane ``default.qubit`` TorchLayer.

Both sides run the same config (default ``configs/genomic.yaml``) as separate processes, so both
pay for interpreter start-up and imports:

* ``qlit cv --config <config>``: Lightning, the config's backend (``qlit``), every fold trained and
  tested with its best checkpoint, beside the classical twin and logistic regression, plus
  TensorBoard logs, checkpoints, figures and the summary files;
* the plain loop (the prototype's approach): for every fold, the same data module (same folds, same
  preprocessing fit on the training rows), ``HybridNet`` with ``backend="default.qubit"``
  (``diff_method="backprop"``, a ``qml.qnn.TorchLayer``), Adam and ReduceLROnPlateau with the config's
  settings, the config's batch size and epochs, validation every epoch, the best-by-``val_loss``
  weights tested; then the same classical twin and logistic regression. No logging, checkpoints or
  figures;
* for reference, the same plain loop with ``backend="qlit"``: the simulator's share of the speed-up,
  apart from what ``qlit cv`` spends around training.

    python benchmarks/end_to_end.py                 # full config (120 epochs: tens of minutes)
    python benchmarks/end_to_end.py --epochs 10     # both sides shortened equally
    python benchmarks/end_to_end.py --workers 2     # adds `qlit cv --workers 2` (folds in forked processes)
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "genomic.yaml"


def cv_seconds_and_accuracy(
    config: Path, env: dict[str, str], epochs: int | None = None, extra: tuple[str, ...] = ()
) -> tuple[float, dict[str, float]]:
    """Wall seconds of ``python -m qlit cv`` in a scratch folder, and its mean test accuracy per model.

    The fold lines it printed go to stderr; its other outputs are thrown away with the folder.
    """
    command = [sys.executable, "-m", "qlit", "cv", "--config", str(config),
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if epochs is not None:
        command.append(f"--trainer.max_epochs={epochs}")
    command += extra
    with tempfile.TemporaryDirectory(prefix="qlit_e2e_") as scratch:
        start = time.perf_counter()
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"qlit cv failed with exit status {done.returncode}")
        summary = json.loads(next(Path(scratch).rglob("cv_summary.json")).read_text())
    for line in done.stdout.splitlines():
        if line.startswith("qlit cv: fold "):
            print(f"    {line}", file=sys.stderr)
    means = {"hybrid": summary["test_acc_mean"]}
    means.update({name: b["test_acc_mean"] for name, b in summary["baselines"].items()})
    return elapsed, means


def run_qlit_cv(config: Path, epochs: int | None, env: dict[str, str], workers: int | None = None) -> float:
    """Wall seconds of ``python -m qlit cv`` (with ``--workers``: its folds in processes forked from it)."""
    extra = (f"--workers={workers}",) if workers else ()
    return cv_seconds_and_accuracy(config, env, epochs, extra)[0]


def without_early_stopping(config: Path, folder: Path) -> Path:
    """A copy of ``config`` whose callbacks lack EarlyStopping (every fold runs all max_epochs)."""
    import yaml

    content = yaml.safe_load(config.read_text())
    callbacks = content["trainer"].get("callbacks") or []
    content["trainer"]["callbacks"] = [c for c in callbacks if "EarlyStopping" not in str(c.get("class_path", c))]
    path = folder / f"{config.stem}_no_early_stopping.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def early_stopping_effect(config: Path, repeats: int, env: dict[str, str], epochs: int | None = None) -> int:
    """``--early-stopping``: ``qlit cv`` with the config's EarlyStopping against the same config without it."""
    with tempfile.TemporaryDirectory(prefix="qlit_es_") as scratch:
        full = without_early_stopping(config, Path(scratch))
        rounds = []
        for round_ in range(repeats):  # interleaved, so a slow spell of the machine hits both alike
            print(f"round {round_ + 1} of {repeats}: qlit cv with, then without EarlyStopping", file=sys.stderr)
            rounds.append((cv_seconds_and_accuracy(config, env, epochs), cv_seconds_and_accuracy(full, env, epochs)))
    with_es = statistics.median(r[0][0] for r in rounds)
    without = statistics.median(r[1][0] for r in rounds)
    print("| run | median wall time (s) | rounds (s) | mean test_acc: " + ", ".join(rounds[0][0][1]) + " |")
    print("|---|---|---|---|")
    for label, index, median in (("with EarlyStopping", 0, with_es), ("without (all max_epochs)", 1, without)):
        times = ", ".join(f"{r[index][0]:.1f}" for r in rounds)
        accs = ", ".join(f"{v:.3f}" for v in rounds[0][index][1].values())
        print(f"| `qlit cv`, {label} | {median:.1f} | {times} | {accs} |")
    print(f"\nSpeed-up from early stopping: {without / with_es:.2f}x")
    return 0


def run_plain(config: Path, epochs: int | None, backend: str, env: dict[str, str]) -> tuple[float, dict]:
    """Wall seconds and results of the plain loop, run as its own process like ``qlit cv``."""
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, "--plain-only", "--config", str(config), "--backend", backend]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"the plain loop failed with exit status {done.returncode}")
    return elapsed, json.loads(done.stdout.strip().splitlines()[-1])


def plain_cross_validation(config_path: Path, epochs: int | None, backend: str) -> dict:
    """The prototype's loop: every fold, hybrid and classical twin trained by hand, then logistic regression."""
    import numpy as np
    import torch
    import yaml
    from sklearn.linear_model import LogisticRegression

    from qlit.models import HybridNet

    config = yaml.safe_load(config_path.read_text())
    model_args, trainer_args = config["model"], config["trainer"]
    module_name, class_name = config["data"]["class_path"].rsplit(".", 1)
    data_class = getattr(importlib.import_module(module_name), class_name)
    data_args = dict(config["data"].get("init_args", {}))
    max_epochs = epochs if epochs is not None else trainer_args["max_epochs"]
    seed = config.get("seed_everything", 0) or 0

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, binary: bool) -> torch.Tensor:
        if binary:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), y.float())
        return torch.nn.functional.nll_loss(torch.log_softmax(logits, -1), y)

    def evaluate(net, dataset, batch_size: int, binary: bool) -> tuple[float, float]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        total, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for x, y in loader:
                logits = net(x)
                total += loss_fn(logits, y, binary).item() * len(y)
                predicted = (logits.squeeze(-1) > 0).long() if binary else logits.argmax(-1)
                correct += int((predicted == y).sum())
                count += len(y)
        return total / count, correct / count

    def train(core: str, data) -> float:
        torch.manual_seed(seed)
        binary = data.num_classes == 2
        net = HybridNet(
            data.num_features, data.num_classes, model_args["n_qubits"], model_args["n_layers"], model_args["ansatz"],
            model_args["embedding"], backend, model_args.get("diff_method", "backprop"), core=core,
        )
        optimizer = torch.optim.Adam(
            net.parameters(), lr=model_args["lr"], weight_decay=model_args.get("weight_decay", 0.0)
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=model_args["lr_factor"], patience=model_args["lr_patience"]
        )
        train_set = data.train_dataloader().dataset
        val_set, test_set = data.val_dataloader().dataset, data.test_dataloader().dataset
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=data.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        best_loss, best_state = float("inf"), copy.deepcopy(net.state_dict())
        for _ in range(max_epochs):
            net.train()
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(net(x), y, binary).backward()
                optimizer.step()
            net.eval()
            val_loss, _ = evaluate(net, val_set, data.batch_size, binary)
            scheduler.step(val_loss)
            if val_loss < best_loss:
                best_loss, best_state = val_loss, copy.deepcopy(net.state_dict())
        net.load_state_dict(best_state)
        return evaluate(net, test_set, data.batch_size, binary)[1]

    results: dict[str, list[float]] = {"hybrid": [], "classical_twin": [], "logistic_regression": []}
    for fold in range(data_args.get("num_folds", 5)):
        data = data_class(**{**data_args, "fold": fold})
        data.setup("fit")
        results["hybrid"].append(train("quantum", data))
        results["classical_twin"].append(train("classical", data))
        x_train, y_train = data.train_dataloader().dataset.tensors
        x_test, y_test = data.test_dataloader().dataset.tensors
        regression = LogisticRegression(max_iter=5000).fit(x_train.numpy(), y_train.numpy())
        results["logistic_regression"].append(float(np.mean(regression.predict(x_test.numpy()) == y_test.numpy())))
    return {name: float(np.mean(values)) for name, values in results.items()}


def _each(runs: list[float]) -> str:
    """`` (a, b, c)``: every round's seconds, after the median; nothing for a single round."""
    return " (" + ", ".join(f"{r:.1f}" for r in runs) + ")" if len(runs) > 1 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--epochs", type=int, default=None, help="override max_epochs on both sides")
    parser.add_argument("--backend", default="default.qubit", help="PennyLane device of the plain loop")
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS for both processes (default: inherited)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all runs, interleaved; medians are reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--early-stopping", action="store_true",
                        help="instead: qlit cv with the config's EarlyStopping against the same config without it")
    parser.add_argument("--all-epochs", action="store_true",
                        help="drop the config's EarlyStopping: qlit cv trains every max_epochs, as the plain loop")
    parser.add_argument("--workers", type=int, default=None,
                        help="also run `qlit cv --workers N` (parallel folds) in every round")
    parser.add_argument("--plain-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    config = args.config.resolve()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    if args.plain_only:
        print(json.dumps(plain_cross_validation(config, args.epochs, args.backend)))
        return 0

    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if args.early_stopping:
        return early_stopping_effect(config, args.repeats, env, args.epochs)
    if args.all_epochs:
        scratch = tempfile.TemporaryDirectory(prefix="qlit_all_epochs_")
        config = without_early_stopping(config, Path(scratch.name))
    qlit_runs, parallel_runs, plain_runs, reference_runs = [], [], [], []
    # Rounds interleave the three runs, so a slow spell of a shared machine hits all of them alike.
    for round_ in range(1, args.repeats + 1):
        label = f" (round {round_} of {args.repeats})" if args.repeats > 1 else ""
        print(f"qlit cv --config {config.name}" + (f" (max_epochs={args.epochs})" if args.epochs else "") + label,
              file=sys.stderr)
        qlit_runs.append(run_qlit_cv(config, args.epochs, env))
        print(f"  {qlit_runs[-1]:.1f} s", file=sys.stderr)
        if args.workers:
            print(f"qlit cv --workers {args.workers}{label}", file=sys.stderr)
            parallel_runs.append(run_qlit_cv(config, args.epochs, env, args.workers))
            print(f"  {parallel_runs[-1]:.1f} s", file=sys.stderr)
        print(f"plain PyTorch loop with a {args.backend} TorchLayer{label}", file=sys.stderr)
        plain_seconds, accuracies = run_plain(config, args.epochs, args.backend, env)
        plain_runs.append(plain_seconds)
        print(f"  {plain_seconds:.1f} s", file=sys.stderr)
        # The same plain loop on qlit's simulator separates the simulator's speed-up from the cost of
        # everything qlit cv adds around training (Lightning, logging, checkpoints, figures).
        print(f"plain PyTorch loop with the qlit backend (reference){label}", file=sys.stderr)
        reference_runs.append(run_plain(config, args.epochs, "qlit", env)[0])
        print(f"  {reference_runs[-1]:.1f} s", file=sys.stderr)

    qlit_seconds, plain_seconds = statistics.median(qlit_runs), statistics.median(plain_runs)
    reference_seconds = statistics.median(reference_runs)
    result = {
        "config": str(config.relative_to(REPO) if config.is_relative_to(REPO) else config),
        "all_epochs": args.all_epochs,
        "epochs": args.epochs,
        "threads": env.get("OMP_NUM_THREADS", "torch default"),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "repeats": args.repeats,
        "qlit_cv_seconds": qlit_seconds,
        "plain_seconds": plain_seconds,
        "plain_backend": args.backend,
        "plain_qlit_seconds": reference_seconds,
        "speedup": plain_seconds / qlit_seconds,
        "speedup_per_round": [p / q for p, q in zip(plain_runs, qlit_runs)],
        "runs": {"qlit_cv": qlit_runs, "plain": plain_runs, "plain_qlit": reference_runs},
        **({
            "workers": args.workers,
            "qlit_cv_parallel_seconds": statistics.median(parallel_runs),
            "parallel_speedup_over_serial": qlit_seconds / statistics.median(parallel_runs),
            "parallel_speedup_over_plain": plain_seconds / statistics.median(parallel_runs),
            "parallel_runs": parallel_runs,
        } if args.workers else {}),
        "plain_mean_test_acc": accuracies,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    what = "median wall time (s)" if args.repeats > 1 else "wall time (s)"
    print(f"| run | {what} |\n|---|---|")
    print(f"| `qlit cv` (backend from the config) | {qlit_seconds:.1f}{_each(qlit_runs)} |")
    if args.workers:
        parallel = result["qlit_cv_parallel_seconds"]
        print(f"| `qlit cv --workers {args.workers}` | {parallel:.1f}{_each(parallel_runs)} |")
    print(f"| plain loop, `{args.backend}` TorchLayer | {plain_seconds:.1f}{_each(plain_runs)} |")
    print(f"| plain loop, `qlit` backend (reference) | {reference_seconds:.1f}{_each(reference_runs)} |")
    print()
    per_round = ", ".join(f"{r:.2f}x" for r in result["speedup_per_round"])
    print(f"Speed-up of qlit cv over the plain {args.backend} loop: {result['speedup']:.2f}x (target >= 3x)"
          + (f"; per round: {per_round}." if args.repeats > 1 else "."))
    print(f"Speed-up of the plain loop from the qlit backend alone: {plain_seconds / reference_seconds:.2f}x.")
    if args.workers:
        print(f"qlit cv --workers {args.workers}: {result['parallel_speedup_over_serial']:.2f}x over serial qlit cv "
              f"(target >= 1.7x), {result['parallel_speedup_over_plain']:.2f}x over the plain loop (target >= 5x).")
    print("Plain loop mean test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracies.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
