"""Quality control and PCA of a genotype matrix read in blocks of SNPs, so memory stays bounded.

Population-genetics PCA (as in EIGENSOFT and PLINK): SNPs below a minor-allele frequency are dropped,
each kept SNP is centred by ``2p`` and scaled by ``sqrt(2p(1 - p))`` (``p`` its allele frequency), a
missing call becomes the SNP's mean (0 after centring), and the leading principal components of the
standardised matrix are found. Everything is estimated from the rows it is fit on (a fold's training
rows); other rows are only projected.

The solver is randomized subspace iteration (Halko, Martinsson & Tropp 2011, algorithm 4.4) over
blocks of SNPs: each pass reads the int8 genotypes once, block by block, and touches the standardised
block only through products with thin ``(rows, l)`` or ``(SNPs, l)`` matrices, so the standardised
matrix never exists as floats. The standardisation is folded into those products, so a block is
converted to float once per pass and never rescaled element by element.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse

MISSING = -127  # bed-reader's int8 code for a missing call

ReadBlock = Callable[[np.ndarray, int, int], np.ndarray]
"""``read(rows, start, stop)``: int8 genotypes of ``rows`` at SNPs ``start:stop`` (``MISSING`` for no call)."""


@dataclass
class GenotypePCA:
    """A fitted QC + PCA: what projecting new genotypes needs.

    Attributes:
        keep: Indices of the SNPs that passed QC, increasing.
        mean: ``2p`` of each kept SNP (the imputed value of a missing call).
        scale: ``sqrt(2p(1 - p))`` of each kept SNP.
        loadings: ``(n_components, kept SNPs)`` principal axes of the standardised genotypes.
        singular_values: The leading singular values of the standardised training matrix.
        scores: ``(rows, n_components)`` scores of the fit rows.
        projected: Scores of the rows given as ``project`` to `fit_genotype_pca` (``None`` if none).
    """

    keep: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    loadings: np.ndarray
    singular_values: np.ndarray
    scores: np.ndarray
    projected: np.ndarray | None = None

    def components(self) -> np.ndarray:
        """Loadings divided by the scales: ``(g - mean) @ components().T`` gives the scores of raw genotypes."""
        return self.loadings / self.scale


class _Block:
    """One block of SNPs of some rows, standardised implicitly: ``X = G D - 1 w^T + M diag(w)``.

    ``G`` holds the calls with missing ones set to 0, ``D = diag(1 / scale)``, ``w = mean / scale``
    and ``M`` marks the missing calls, so an observed call gives ``(g - mean) / scale`` and a missing
    one 0. ``M`` is sparse (a few per cent of calls at most), so it costs almost nothing.
    """

    def __init__(self, genotypes: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> None:
        missing = genotypes < 0
        self.g = genotypes.astype(np.float32)  # keeps the reader's (column-major) order: no transposing copy
        self.g[missing] = 0
        self.inv = (1.0 / scale).astype(np.float32)
        self.w = (mean / scale).astype(np.float32)
        self.m = None
        # flatnonzero of the array as laid out is many times faster than a 2-D nonzero
        flat = np.flatnonzero(missing.ravel(order="K"))
        if len(flat):
            n_rows, n_cols = genotypes.shape
            if missing.flags.f_contiguous and not missing.flags.c_contiguous:
                rows, cols = flat % n_rows, flat // n_rows
            else:
                rows, cols = flat // n_cols, flat % n_cols
            ones = np.ones(len(flat), dtype=np.float32)
            self.m = scipy.sparse.csr_matrix((ones, (rows, cols)), shape=genotypes.shape)

    def times(self, a: np.ndarray) -> np.ndarray:
        """``X @ a`` for ``a`` of shape ``(SNPs, l)``."""
        out = self.g @ (self.inv[:, None] * a) - (self.w @ a)[None, :]
        if self.m is not None:
            out += self.m @ (self.w[:, None] * a)
        return out

    def t_times(self, q: np.ndarray) -> np.ndarray:
        """``X.T @ q`` for ``q`` of shape ``(rows, l)``."""
        out = self.inv[:, None] * (self.g.T @ q) - self.w[:, None] * q.sum(axis=0)[None, :]
        if self.m is not None:
            out += self.w[:, None] * (self.m.T @ q)
        return out


def allele_stats(genotypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per SNP: the frequency ``p`` of the counted allele over the observed calls, and their number."""
    observed = genotypes >= 0
    count = observed.sum(axis=0)
    total = np.where(observed, genotypes, 0).sum(axis=0, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(count > 0, total / (2.0 * np.maximum(count, 1)), np.nan)
    return p, count


def fit_genotype_pca(
    read: ReadBlock,
    n_snps: int,
    rows: np.ndarray,
    n_components: int,
    min_maf: float = 0.01,
    project: np.ndarray | None = None,
    block_snps: int = 8192,
    power_iterations: int = 4,
    oversample: int = 20,
    seed: int = 0,
    on_kept: Callable[[int], None] | None = None,
    cache_bytes: int = 3 * 2**30,
) -> GenotypePCA:
    """Fit MAF filter, standardisation and PCA on ``rows``, streaming SNP blocks through ``read``.

    Args:
        read: Reads int8 genotypes of given rows and SNP range (see `ReadBlock`).
        n_snps: Number of SNPs the source holds.
        rows: The rows to fit on (a fold's training rows); nothing else is read until the last pass.
        n_components: Principal components to find.
        min_maf: Smallest minor-allele frequency kept; SNPs with no variation are always dropped.
        project: Rows to project onto the fitted components in the last pass (e.g. every other row).
        block_snps: SNPs read per block; memory is about ``rows x block_snps x 5`` bytes.
        power_iterations: Subspace iterations: more bring components whose singular values lie close
            to the next ones nearer the exact ones, at one more pass each.
        oversample: Extra dimensions of the random subspace beyond ``n_components``.
        seed: Seed of the random test matrix.
        on_kept: Called with the number of SNPs kept, after the QC pass and before the PCA passes, so a
            caller can refuse (say) more components than SNPs without waiting for them.
        cache_bytes: When ``rows x n_snps`` int8 fit in this many bytes, the kept SNPs of the fit rows
            are read once and kept (as int8) for the later passes; otherwise every pass reads ``read``
            again, and memory stays a few blocks however many SNPs there are.

    Returns:
        The fitted `GenotypePCA`.

    Raises:
        ValueError: no SNP passes QC, or ``n_components`` exceeds the SNPs kept or the rows (the data
            modules turn these into one-line errors before calling).
    """
    rows = np.asarray(rows)
    starts = list(range(0, n_snps, block_snps))
    keeps, means, scales = [], [], []
    cache: list[np.ndarray] | None = [] if len(rows) * n_snps <= cache_bytes else None
    for start in starts:
        stop = min(start + block_snps, n_snps)
        genotypes = read(rows, start, stop)
        p, _ = allele_stats(genotypes)
        maf = np.minimum(p, 1 - p)
        ok = np.isfinite(maf) & (maf > 0) & (maf >= min_maf)
        if cache is not None and ok.any():
            cache.append(np.asfortranarray(genotypes[:, ok]))
        keeps.append(np.flatnonzero(ok) + start)
        means.append(2 * p[ok])
        scales.append(np.sqrt(2 * p[ok] * (1 - p[ok])))
    keep, mean, scale = np.concatenate(keeps), np.concatenate(means), np.concatenate(scales)
    if on_kept is not None:
        on_kept(len(keep))
    if len(keep) == 0:
        raise ValueError("no SNP passes quality control")
    if n_components > min(len(keep), len(rows)):
        raise ValueError(f"n_components={n_components} exceeds the {len(keep)} SNPs kept or the {len(rows)} rows")
    width = min(n_components + oversample, len(keep), len(rows))
    # Per-block pieces of the kept SNPs: (start, stop, kept column offsets in the block, slice into keep).
    pieces, offset = [], 0
    for start, kept in zip(starts, keeps):
        stop = min(start + block_snps, n_snps)
        if len(kept):
            pieces.append((start, stop, kept - start, slice(offset, offset + len(kept))))
        offset += len(kept)

    def blocks():
        """The fit rows' standardised blocks, with where each lies: (part of keep, start, stop, columns)."""
        for i, (start, stop, cols, part) in enumerate(pieces):
            genotypes = cache[i] if cache is not None else read(rows, start, stop)[:, cols]
            yield (part, start, stop, cols), _Block(genotypes, mean[part], scale[part])

    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((len(keep), width)).astype(np.float32)
    y = np.zeros((len(rows), width), dtype=np.float32)
    for (part, *_), block in blocks():
        y += block.times(omega[part])
    del omega
    for _ in range(power_iterations):
        q = np.linalg.qr(y.astype(np.float64))[0].astype(np.float32)  # float32 QR is far slower
        y = np.zeros_like(y)
        for _, block in blocks():
            y += block.times(block.t_times(q))
    q = np.linalg.qr(y.astype(np.float64))[0].astype(np.float32)
    # Last pass: B^T = X^T Q block by block; B B^T gives the singular vectors in the subspace.
    z = np.empty((len(keep), width), dtype=np.float32)
    gram = np.zeros((width, width))
    other = np.zeros((0 if project is None else len(project), width))
    for (part, start, stop, cols), block in blocks():
        z[part] = block.t_times(q)
        gram += z[part].T.astype(np.float64) @ z[part].astype(np.float64)
        if project is not None:  # the projected rows are standardised with the fit rows' statistics only
            projected = _Block(read(project, start, stop)[:, cols], mean[part], scale[part])
            other += projected.times(z[part]).astype(np.float64)
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1][:n_components]
    sv = np.sqrt(np.maximum(values[order], 0.0))
    w = vectors[:, order]
    u = q.astype(np.float64) @ w
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(n_components)])  # fixed signs: a reproducible state
    signs[signs == 0] = 1
    w, u = w * signs, u * signs
    safe = np.where(sv > 0, sv, 1.0)
    loadings = ((z.astype(np.float64) @ w) / safe).T
    projected = None if project is None else (other @ w) / safe
    return GenotypePCA(keep, mean, scale, loadings, sv, u * sv, projected)


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
        block_snps: SNPs read per block.
    """
    out = np.zeros((len(rows), components.shape[0]))
    for start in range(0, n_snps, block_snps):
        stop = min(start + block_snps, n_snps)
        g = read(rows, start, stop).astype(np.float64)
        g = np.where(g < 0, mean[start:stop], g) - mean[start:stop]
        out += g @ components[:, start:stop].T
    return out
