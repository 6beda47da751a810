"""Write `qlit predict` results to a CSV file in the run directory."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from qlit.io.runs import unused_path


class PredictionWriter(BasePredictionWriter):
    """Write ``predictions.csv``: sample id, predicted label, one probability column per class.

    An existing file is never overwritten; the next free name (``predictions_1.csv``, …) is used.

    Args:
        filename: Name of the CSV file inside the run directory.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions, batch_indices) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, not only rank 0
        probs = torch.cat(list(predictions)).cpu()
        order = _row_order(batch_indices, len(probs))
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Under DDP each rank predicted its own, unequal shard: gather them and restore the file's order.
            shards: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(shards, (probs, order))
            probs, order = torch.cat([p for p, _ in shards]), torch.cat([o for _, o in shards])
        if not trainer.is_global_zero:
            return
        probs = probs[torch.argsort(order, stable=True)]
        ids = trainer.datamodule.predict_ids
        names = pl_module.class_names
        if probs.shape != (len(ids), len(names)):
            shape = tuple(probs.shape)
            raise RuntimeError(f"predictions of shape {shape} for {len(ids)} samples and {len(names)} classes")
        # Every row is formatted before the file is opened: a failure must not leave a header-only file behind.
        rows = [["id", "label", *(f"prob_{name}" for name in names)]]
        for sample_id, row in zip(ids, probs.tolist()):
            label = names[max(range(len(row)), key=row.__getitem__)]
            rows.append([sample_id, label, *(f"{p:.6f}" for p in row)])
        out_dir = Path(log_dir or trainer.default_root_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = unused_path(out_dir / self.filename)
        with self.path.open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)
        print(f"qlit: wrote {len(ids)} predictions to {self.path}")


def _row_order(batch_indices: list, n_rows: int) -> torch.Tensor:
    """The dataset index of each predicted row, in prediction order.

    Lightning passes the indices nested as dataloaders × batches × rows; qlit predicts from one
    dataloader. Where it tracked none (a sampler it cannot see through), rows came in file order.
    """
    batches = batch_indices[0] if batch_indices else []
    flat = [int(i) for batch in batches for i in batch]
    return torch.as_tensor(flat if len(flat) == n_rows else range(n_rows), dtype=torch.long)
