"""What the epoch metrics cost in a training step: torchmetrics against the hand-written metric it replaced.

A step is forward, loss, metric update, backward and fused Adam of `HybridNet` on the ``qlit`` backend, in
one thread, at the two shipped experiments' sizes:

* ``iris``: 4 features, 2 classes (one logit, binary cross-entropy), 4 qubits, 2 ``basic`` layers, batch 16;
* ``genomic``: 4 features, 5 classes (log-softmax, NLL), 4 qubits, 2 ``strong`` layers, batch 32.

Three variants are timed interleaved, step by step, so a busy machine slows them alike:

* ``none``: no metric at all, the floor;
* ``hand-written``: the ``LossAccuracy`` metric qlit used before (one torchmetrics `Metric` whose update is
  three in-place additions), copied here;
* ``torchmetrics``: `qlit.models.classifier.EpochMetrics`, torchmetrics' ``MeanMetric`` and ``Accuracy``.

Each reports its median step, and the metric variants their extra time over ``none`` in ms and as a share
of the step. The epoch-end ``compute`` and ``reset`` are timed apart: they run once per epoch per stage.

``--lightning`` adds what a user waits for: whole epochs of `HybridClassifier` in a Lightning ``Trainer``
(training and validation, the case's train and validation rows: 64 and 16 for Iris, 640 and 160 for the
genomic config), the variants interleaved round by round, median seconds per epoch.

    python benchmarks/metrics.py --lightning   # about a minute
    python benchmarks/metrics.py --json     # {"rows": [{"case", "variant", "ms_per_step", ...}, ...]}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from qlit.models import HybridNet
from qlit.models.classifier import EpochMetrics

CASES = {"iris": (4, 2, "basic", 16), "genomic": (4, 5, "strong", 32)}
VARIANTS = ("none", "hand-written", "torchmetrics")


class HandWritten(Metric):
    """qlit's former hand-written epoch metric: loss sum, correct and count, summed across processes."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.binary = num_classes == 2
        self.add_state("loss_sum", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        predicted = (logits > 0).long() if self.binary else logits.argmax(-1)
        self.loss_sum += loss.detach() * len(target)
        self.correct += (predicted == target).sum()
        self.count += len(target)

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp(min=1)
        return {"loss": self.loss_sum / count, "acc": self.correct / count}

    @property
    def updated(self) -> bool:
        return bool(self._update_count)


class NoMetric(torch.nn.Module):
    """The floor: no metric, constant values logged at the epoch's end."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.updated = True

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        pass

    def compute(self) -> dict[str, torch.Tensor]:
        return {"loss": torch.tensor(0.0), "acc": torch.tensor(0.0)}

    def reset(self) -> None:
        pass


METRICS = {"none": NoMetric, "hand-written": HandWritten, "torchmetrics": EpochMetrics}
ROWS = {"iris": (64, 16), "genomic": (640, 160)}


def lightning_epochs(case: str, rounds: int, epochs: int) -> dict[str, list[float]]:
    """Seconds per epoch of `HybridClassifier` fits, one per variant per round, interleaved."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from qlit.models import HybridClassifier

    in_features, num_classes, ansatz, batch = CASES[case]
    n_train, n_val = ROWS[case]
    generator = torch.Generator().manual_seed(0)
    data = [
        TensorDataset(torch.randn(n, in_features, generator=generator),
                      torch.randint(num_classes, (n,), generator=generator))
        for n in (n_train, n_val)
    ]
    seconds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            torch.manual_seed(0)
            model = HybridClassifier(in_features, num_classes, n_qubits=4, n_layers=2, ansatz=ansatz, backend="qlit")
            model.epoch_metrics = torch.nn.ModuleDict(
                {name: METRICS[variant](num_classes) for name in model.epoch_metrics}
            )
            trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
            loaders = [DataLoader(d, batch_size=batch, shuffle=i == 0) for i, d in enumerate(data)]
            start = time.perf_counter()
            trainer.fit(model, *loaders)
            seconds[variant].append((time.perf_counter() - start) / epochs)
    return seconds


class Runner:
    """One variant of one case: a network, fused Adam, a fixed batch, a metric and its step times."""

    def __init__(self, case: str, variant: str) -> None:
        in_features, num_classes, ansatz, batch = CASES[case]
        torch.manual_seed(0)
        self.net = HybridNet(in_features, num_classes, n_qubits=4, n_layers=2, ansatz=ansatz, backend="qlit")
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=0.01, fused=True)
        self.x = torch.randn(batch, in_features)
        self.y = torch.randint(num_classes, (batch,))
        self.binary = num_classes == 2
        self.metric = None if variant == "none" else METRICS[variant](num_classes)
        self.times: list[float] = []
        self.epoch_end: list[float] = []

    def step(self) -> None:
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.net(self.x)
        if self.binary:
            logits = logits.squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(logits, self.y.to(logits.dtype))
        else:
            loss = F.nll_loss(F.log_softmax(logits, dim=-1), self.y)
        if self.metric is not None:
            self.metric.update(logits.detach(), self.y, loss)
        loss.backward()
        self.optimizer.step()
        self.times.append(time.perf_counter() - start)

    def end_epoch(self) -> None:
        if self.metric is None:
            return
        start = time.perf_counter()
        values = self.metric.compute()
        float(values["acc"]), float(values["loss"])
        self.metric.reset()
        self.epoch_end.append(time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="timed steps per variant and case")
    parser.add_argument("--steps-per-epoch", type=int, default=20, help="steps between two epoch ends")
    parser.add_argument("--lightning", action="store_true", help="also time whole epochs in a Lightning Trainer")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of --lightning fits")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per --lightning fit")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    rows = []
    for case in CASES:
        runners = {variant: Runner(case, variant) for variant in VARIANTS}
        for runner in runners.values():  # warm-up: caches, allocator, first-call dispatch
            for _ in range(50):
                runner.step()
            runner.end_epoch()
            runner.times.clear()
            runner.epoch_end.clear()
        for i in range(args.steps):
            for runner in runners.values():
                runner.step()
                if (i + 1) % args.steps_per_epoch == 0:
                    runner.end_epoch()
        floor = statistics.median(runners["none"].times) * 1e3
        for variant, runner in runners.items():
            ms = statistics.median(runner.times) * 1e3
            rows.append({
                "case": case,
                "variant": variant,
                "ms_per_step": round(ms, 4),
                "extra_ms": round(ms - floor, 4),
                "extra_pct": round(100 * (ms - floor) / floor, 2),
                "epoch_end_ms": round(statistics.median(runner.epoch_end) * 1e3, 4) if runner.epoch_end else None,
            })

    epochs = []
    if args.lightning:
        for case in CASES:
            seconds = lightning_epochs(case, args.rounds, args.epochs)
            floor = statistics.median(seconds["none"])
            for variant, values in seconds.items():
                ms = statistics.median(values) * 1e3
                epochs.append({"case": case, "variant": variant, "ms_per_epoch": round(ms, 3),
                               "extra_pct": round(100 * (ms / 1e3 - floor) / floor, 2),
                               "rounds_ms": [round(v * 1e3, 2) for v in values]})

    if args.json:
        report = {"steps": args.steps, "load_average": os.getloadavg()[0], "rows": rows, "lightning_epochs": epochs}
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps per variant, load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':8} {'variant':13} {'ms/step':>8} {'extra ms':>9} {'extra %':>8} {'epoch end ms':>13}")
    for r in rows:
        end = "" if r["epoch_end_ms"] is None else f"{r['epoch_end_ms']:.3f}"
        print(f"{r['case']:8} {r['variant']:13} {r['ms_per_step']:8.3f} {r['extra_ms']:9.3f} {r['extra_pct']:8.1f} "
              f"{end:>13}")
    if epochs:
        print(f"\nLightning fits, {args.epochs} epochs each, {args.rounds} interleaved rounds: median ms per epoch")
        print(f"{'case':8} {'variant':13} {'ms/epoch':>9} {'extra %':>8}  rounds")
        for r in epochs:
            print(f"{r['case']:8} {r['variant']:13} {r['ms_per_epoch']:9.2f} {r['extra_pct']:8.1f}  {r['rounds_ms']}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
