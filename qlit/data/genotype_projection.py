"""Scores of int8 genotypes on fitted principal components, the same bits however they were read.

`project_genotypes` gives ``(g - mean) @ components.T`` with a missing call scoring 0. The fit
(`qlit.data.genotype_pca.fit_genotype_pca`, from the genotypes it kept in memory) and a restored
checkpoint (from the ``.bed``) both project through `Projector`, which sums over fixed chunks of SNPs
in two fixed halves, so the scores depend on the genotypes and the rows' order alone: the two agree
to the bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

CHUNK = 256  # SNPs converted to float64 at a time, one product each

ReadBlock = Callable[[np.ndarray, int, int], np.ndarray]
"""``read(rows, start, stop)``: int8 genotypes of ``rows`` at SNPs ``start:stop`` (negative for no call)."""


def half_point(n_snps: int) -> int:
    """Where the second half of the SNPs starts: a whole number of chunks."""
    return -(-n_snps // (2 * CHUNK)) * CHUNK


def projection_order(rows: np.ndarray, project: np.ndarray) -> np.ndarray:
    """The order in which the fit projects ``project``: those of its fit ``rows`` first, in their order.

    ``project_genotypes(read, project[order], ...)`` gives, row for row, the bits of ``fit.projected[order]``.
    """
    rows, project = np.asarray(rows), np.asarray(project)
    stacked = np.concatenate([rows[np.isin(rows, project)], project[~np.isin(project, rows)]])
    sorter = np.argsort(project)
    return sorter[np.searchsorted(project, stacked, sorter=sorter)]


class Projector:
    """``(g - mean) @ components.T`` of the SNPs from ``start`` on, fed as int8 columns in any pieces.

    The columns are converted to float64 with a missing call set to the SNP's mean, in chunks of
    `CHUNK` SNPs counted from ``start`` whatever the pieces, one product each, and ``mean @
    components.T`` is taken off at the end.
    """

    def __init__(self, n_rows: int, mean: np.ndarray, components: np.ndarray, start: int = 0) -> None:
        self.mean, self.components = mean, components
        self.buf = np.empty((n_rows, CHUNK), order="F")
        self.filled, self.done = 0, start
        self.out = np.zeros((components.shape[0], n_rows))  # transposed: no copy per product
        self.shift = np.zeros(components.shape[0])

    def add(self, parts: Sequence[np.ndarray], missing: Sequence[np.ndarray | None] | None = None) -> None:
        """The next columns: ``parts`` stacked top to bottom (the same SNPs of consecutive rows).

        ``missing``: for each part, where its missing calls lie if known (column-major positions).
        """
        known = missing or [None] * len(parts)
        missing = [np.flatnonzero(part.T < 0) if m is None else m for part, m in zip(parts, known)]
        width, start = parts[0].shape[1], 0
        while start < width:
            take = min(CHUNK - self.filled, width - start)
            top = 0
            for part, where in zip(parts, missing):
                n = len(part)
                self.buf[top : top + n, self.filled : self.filled + take] = part[:, start : start + take]
                lo, hi = np.searchsorted(where, (start * n, (start + take) * n))
                cols = where[lo:hi] // n - start + self.filled
                self.buf[top + where[lo:hi] % n, cols] = self.mean[self.done + cols]
                top += n
            self.filled += take
            start += take
            if self.filled == CHUNK:
                self._flush()

    def _flush(self) -> None:
        chunk, cols = self.buf[:, : self.filled], slice(self.done, self.done + self.filled)
        self.out += self.components[:, cols] @ chunk.T
        self.shift += self.components[:, cols] @ self.mean[cols]
        self.done += self.filled
        self.filled = 0

    def result(self) -> np.ndarray:
        if self.filled:
            self._flush()
        return (self.out - self.shift[:, None]).T


def project_genotypes(read: ReadBlock, rows: np.ndarray, n_snps: int, mean: np.ndarray, components: np.ndarray,
                      block_snps: int = 8192) -> np.ndarray:
    """Scores ``(g - mean) @ components.T`` of ``rows``, missing calls taken as ``mean``, block by block.

    Args:
        read: Reads int8 genotypes (see `ReadBlock`) of a source whose SNPs are already aligned with
            ``mean`` and ``components`` (one column per fitted SNP).
        rows: Rows to project.
        n_snps: Number of (aligned) SNPs, ``len(mean)``.
        mean: Per-SNP mean.
        components: ``(k, n_snps)``, the loadings over the scales (`GenotypePCA.components`).
        block_snps: SNPs read per block (the scores do not depend on it).
    """
    half = half_point(n_snps)
    first, second = Projector(len(rows), mean, components), Projector(len(rows), mean, components, half)
    with threadpool_limits(1, "blas"):  # as in the fit: the same products, the same bits
        for start in range(0, n_snps, block_snps):
            stop = min(start + block_snps, n_snps)
            g = read(rows, start, stop)
            if start < half:
                first.add([g[:, : half - start]])
            if stop > half:
                second.add([g[:, max(half - start, 0) :]])
        return np.ascontiguousarray(first.result() + second.result())
