"""Quality control and PCA of a genotype matrix read in blocks of SNPs, so memory stays bounded.

Population-genetics PCA (as in EIGENSOFT and PLINK): SNPs below a minor-allele frequency are dropped,
each kept SNP is centred by ``2p`` and scaled by ``sqrt(2p(1 - p))`` (``p`` its allele frequency), a
missing call becomes the SNP's mean (0 after centring), and the leading principal components of the
standardised matrix are found. Everything is estimated from the rows it is fit on (a fold's training
rows); other rows are only projected.

The solver is randomized subspace iteration (Halko, Martinsson & Tropp 2011, algorithm 4.4) over
blocks of SNPs: each pass reads the int8 genotypes once (kept in memory when they fit) and touches
the standardised matrix only through products with thin ``(rows, l)`` or ``(SNPs, l)`` matrices, a
chunk of `CHUNK` SNPs converted to float at a time (missing calls set to the mean), so the standardised
matrix never exists as floats and each chunk serves both products of a pass while it is in cache. A
pass gives the Rayleigh-Ritz estimate of its subspace ``Q`` (from ``Z = X^T Q``: the loadings) and
``X Z = X X^T Q``, the next subspace, which is also the fit rows' scores under those loadings; the
iteration stops once no component's scores moved by more than its convergence rate allows for an
error of ``tolerance`` (see `fit_genotype_pca`), or after ``power_iterations`` power iterations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from qlit.data.genotype_projection import Projector, ReadBlock, half_point, projection_order

MISSING = -127  # bed-reader's int8 code for a missing call
CHUNK = 256  # SNPs converted to float at a time: a chunk stays in cache for all it is used for


@dataclass
class GenotypePCA:
    """A fitted QC + PCA: what projecting new genotypes needs.

    Attributes:
        keep: Indices of the SNPs that passed QC, increasing.
        mean: ``2p`` of each kept SNP (the imputed value of a missing call).
        scale: ``sqrt(2p(1 - p))`` of each kept SNP.
        loadings: ``(n_components, kept SNPs)`` principal axes of the standardised genotypes.
        singular_values: The leading singular values of the standardised training matrix.
        scores: ``(rows, n_components)`` scores of the fit rows on the loadings.
        projected: `qlit.data.genotype_projection.project_genotypes` scores of the rows given as
            ``project`` (``None`` if none).
        iterations: Power iterations made (passes over the fit rows after the QC pass: ``iterations + 2``).
        error: When the iteration stopped early, the largest estimated sine of the angle between a
            component and the converged one (see ``tolerance`` of `fit_genotype_pca`); ``nan`` at the cap.
    """

    keep: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    loadings: np.ndarray
    singular_values: np.ndarray
    scores: np.ndarray
    projected: np.ndarray | None = None
    iterations: int = 0
    error: float = float("nan")

    def components(self) -> np.ndarray:
        """Loadings divided by the scales: ``(g - mean) @ components().T`` gives the scores of raw genotypes."""
        return self.loadings / self.scale


class _Block:
    """The kept SNPs of one block for the fit rows, standardised implicitly: ``X = (B - 1 mean^T) D``.

    ``B`` is the int8 calls as float with a missing call set to its SNP's mean, ``D = diag(1 / scale)``,
    so ``X a = B (D a) - 1 (w^T a)`` and ``X^T q = D B^T q - w (1^T q)`` with ``w = mean / scale``.
    Where the missing calls lie is found once, when the block is made, not in every pass.
    """

    def __init__(self, genotypes: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> None:
        self.g = np.asfortranarray(genotypes)
        self.inv = (1.0 / scale).astype(np.float32)
        self.w = (mean / scale).astype(np.float32)
        self.missing = np.flatnonzero((self.g < 0).ravel(order="F"))  # column-major positions, increasing
        self.fill = mean[self.missing // max(len(self.g), 1)].astype(np.float32)

    def chunks(self, buf: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        """Columns and float32 values ``B`` of each chunk, written into ``buf`` (``rows x CHUNK`` elements)."""
        n = len(self.g)
        for start in range(0, self.g.shape[1], CHUNK):
            stop = min(start + CHUNK, self.g.shape[1])
            flat = buf[: n * (stop - start)]
            chunk = flat.reshape((n, stop - start), order="F")
            np.copyto(chunk, self.g[:, start:stop])
            lo, hi = np.searchsorted(self.missing, (start * n, stop * n))
            flat[self.missing[lo:hi] - start * n] = self.fill[lo:hi]
            yield slice(start, stop), chunk


def allele_stats(genotypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per SNP: the frequency ``p`` of the counted allele over the observed calls, and their number."""
    wide = np.int32 if len(genotypes) < 2**23 else np.int64  # sums up to 255 x rows
    signed = genotypes.sum(axis=0, dtype=wide).astype(np.int64)
    missing = (genotypes.view(np.uint8).sum(axis=0, dtype=wide) - signed) // 256  # a missing call: 256 more unsigned
    total = signed - MISSING * missing  # every missing call counted MISSING
    count = len(genotypes) - missing
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(count > 0, total / (2.0 * np.maximum(count, 1)), np.nan)
    return p, count


def _sweep(blocks: Iterator, width: int, n: int, q: np.ndarray | None = None, omega: np.ndarray | None = None,
           z: np.ndarray | None = None, times: bool = True) -> tuple[np.ndarray | None, np.ndarray]:
    """One pass: ``Z = X^T q`` into ``z`` (if ``q``) and ``Y = X Z`` (or ``X omega``; if ``times``).

    Returns ``Y`` and the Gram matrix ``Z^T Z`` (float64; zeros without ``q``).
    """
    y = np.zeros((n, width), dtype=np.float32) if times else None
    shift, gram = np.zeros(width, dtype=np.float32), np.zeros((width, width))
    q_sum = None if q is None else q.sum(axis=0)
    buf = np.empty(n * CHUNK, dtype=np.float32)
    for part, block in blocks:
        for cols, chunk in block.chunks(buf):
            inv, w = block.inv[cols, None], block.w[cols]
            if q is not None:
                a = z[part][cols]
                a[...] = inv * (chunk.T @ q) - w[:, None] * q_sum
            else:
                a = omega[part][cols]
            if times:
                y += chunk @ (inv * a)
                shift += w @ a
        if q is not None:
            zp = z[part].astype(np.float64)
            gram += zp.T @ zp
    if times:
        y -= shift
    return y, gram


def _change(before: np.ndarray, after: np.ndarray, values: np.ndarray) -> float:
    """Estimated sine of the angle between each leading component and the converged one; the largest.

    ``before`` and ``after`` are the fit rows' scores of two successive iterations. Subspace iteration
    shrinks a component's angle by about ``rate = lambda_(l+1) / lambda_j`` per iteration (the last
    Ritz value over the component's), so what is left after the change of the last one is about
    ``change * rate / (1 - rate)``; a component with no gap below it (``rate`` near 1) never stops early.
    """
    cos = np.abs((before * after).sum(axis=0)) / (np.linalg.norm(before, axis=0) * np.linalg.norm(after, axis=0))
    sine = np.sqrt(np.maximum(1.0 - np.nan_to_num(cos) ** 2, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = values[-1] / values[: after.shape[1]]
        left = np.where((rate >= 0) & (rate < 1), sine * rate / (1 - rate), np.inf)
    return float(np.max(np.where(sine == 0, 0.0, left)))


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
    tolerance: float = 0.01,
) -> GenotypePCA:
    """Fit MAF filter, standardisation and PCA on ``rows``, streaming SNP blocks through ``read``.

    Args:
        read: Reads int8 genotypes of given rows and SNP range (see `ReadBlock`).
        n_snps: Number of SNPs the source holds.
        rows: The rows to fit on (a fold's training rows); every statistic comes from them alone.
        n_components: Principal components to find.
        min_maf: Smallest minor-allele frequency kept; SNPs with no variation are always dropped.
        project: Rows to project with `project_genotypes` (e.g. every row, fit rows included): read
            with the fit rows in the first pass and kept, when they fit in ``cache_bytes``.
        block_snps: SNPs read per block; memory is about ``rows x block_snps x 5`` bytes.
        power_iterations: The most subspace iterations: more bring components whose singular values lie
            close to the next ones nearer the exact ones, at one more pass each.
        oversample: Extra dimensions of the random subspace beyond ``n_components``.
        seed: Seed of the random test matrix.
        on_kept: Called with the number of SNPs kept, after the QC pass and before the PCA passes, so a
            caller can refuse (say) more components than SNPs without waiting for them.
        cache_bytes: When the int8 genotypes (``rows x n_snps``, plus the other rows of ``project``)
            fit in this many bytes, the kept SNPs are read once and kept for the later passes (if only
            the fit rows fit, those); otherwise every pass reads ``read`` again, and memory stays a few
            blocks however many SNPs there are.
        tolerance: Stop before ``power_iterations`` once every component's estimated sine of the angle to
            the converged one is at most this: its change over the last iteration, times ``rate / (1 -
            rate)`` with ``rate`` the ratio of the last Ritz value to its own (how fast it converges);
            0 makes exactly ``power_iterations``.

    Returns:
        The fitted `GenotypePCA`.

    Raises:
        ValueError: no SNP passes QC, or ``n_components`` exceeds the SNPs kept or the rows (the data
            modules turn these into one-line errors before calling).
    """
    rows = np.asarray(rows)
    extra = np.zeros(0, dtype=rows.dtype) if project is None else np.asarray(project)[~np.isin(project, rows)]
    starts = list(range(0, n_snps, block_snps))
    keeps, means, scales = [], [], []
    cache: list[_Block] | None = [] if len(rows) * n_snps <= cache_bytes else None
    others: list[np.ndarray] | None = [] if (len(rows) + len(extra)) * n_snps <= cache_bytes else None
    read_rows = np.concatenate([rows, extra]) if others is not None else rows
    for start in starts:
        stop = min(start + block_snps, n_snps)
        genotypes = read(read_rows, start, stop)
        p, _ = allele_stats(genotypes[: len(rows)])  # the fit rows only
        maf = np.minimum(p, 1 - p)
        ok = np.isfinite(maf) & (maf > 0) & (maf >= min_maf)
        block_mean, block_scale = 2 * p[ok], np.sqrt(2 * p[ok] * (1 - p[ok]))
        if cache is not None and ok.any():  # column-major copies of the kept SNPs, by the rows of the transpose
            cache.append(_Block(genotypes.T[ok, : len(rows)].T, block_mean, block_scale))
            if others is not None:
                others.append(genotypes.T[ok, len(rows) :].T)
        keeps.append(np.flatnonzero(ok) + start)
        means.append(block_mean)
        scales.append(block_scale)
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

    def blocks(lo: int, hi: int) -> Iterator[tuple[slice, _Block]]:
        """The fit rows' blocks of kept SNPs of pieces ``lo:hi``, with where each lies in keep."""
        for i in range(lo, hi):
            start, stop, cols, part = pieces[i]
            if cache is None:
                yield part, _Block(read(rows, start, stop)[:, cols], mean[part], scale[part])
            else:
                yield part, cache[i]

    def sweep(**kwargs) -> tuple[np.ndarray | None, np.ndarray]:
        """`_sweep` over two halves of the SNPs, summed in this order (on two threads when held in memory)."""
        halves = [(0, len(pieces) // 2), (len(pieces) // 2, len(pieces))]
        done = _both(lambda bounds: _sweep(blocks(*bounds), width, len(rows), **kwargs), halves, cache is not None)
        return (None if done[0][0] is None else done[0][0] + done[1][0]), done[0][1] + done[1][1]

    rng = np.random.default_rng(seed)
    with threadpool_limits(1, "blas"):  # two threads of our own; BLAS's idle workers would spin against them
        y, _ = sweep(omega=rng.standard_normal((len(keep), width), dtype=np.float32))
        z = np.empty((len(keep), width), dtype=np.float32)
        iterations, error, before = 0, float("nan"), None
        while True:  # pass `iterations + 1`: Z = X^T Q, and X Z for the next Q unless it is the last
            q = np.linalg.qr(y.astype(np.float64))[0].astype(np.float32)  # float32 QR is far slower
            last = iterations == power_iterations
            y, gram = sweep(q=q, z=z, times=not last)
            values, vectors = np.linalg.eigh(gram)
            values, vectors = values[::-1], vectors[:, ::-1]
            if last:
                error = float("nan")
                break
            after = y.astype(np.float64) @ vectors[:, :n_components]  # fit rows' scores by this pass's loadings
            if before is not None:
                error = _change(before, after, values)
                if tolerance > 0 and error <= tolerance:
                    break
            before = after
            iterations += 1
        sv = np.sqrt(np.maximum(values[:n_components], 0.0))
        w = vectors[:, :n_components]
        u = q.astype(np.float64) @ w
        signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(n_components)])  # fixed signs: a reproducible state
        signs[signs == 0] = 1
        w, u = w * signs, u * signs
        safe = np.where(sv > 0, sv, 1.0)
        loadings = ((z.astype(np.float64) @ w) / safe).T
        # The fit rows' scores on these loadings, X Z w / s, where the last pass made X Z (a half step
        # nearer than Q's own u s, whose accuracy the stopping rule does not vouch for).
        scores = u * sv if y is None else (y.astype(np.float64) @ w) / safe
        fit = GenotypePCA(keep, mean, scale, loadings, sv, scores, iterations=iterations, error=error)
        del z
        if project is not None:
            held = cache if others is not None else None
            fit.projected = _project_fit(fit, read, rows, np.asarray(project), pieces, held, others)
    return fit


def _both(work: Callable, halves: list, threads: bool) -> list:
    """``work`` of each half, on two threads or one after the other (the same arithmetic either way)."""
    if not threads:
        return [work(half) for half in halves]
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(work, halves))


def _project_fit(fit: GenotypePCA, read: ReadBlock, rows: np.ndarray, project: np.ndarray, pieces: list,
                 held: list[_Block] | None, others: list[np.ndarray] | None) -> np.ndarray:
    """``project_genotypes`` scores of ``project`` (in its order), from the int8 held in memory if it was."""
    order = projection_order(rows, project)
    fitted = np.flatnonzero(np.isin(rows, project))
    every = len(fitted) == len(rows)

    def piece(i: int) -> tuple[list[np.ndarray], list | None]:
        """The int8 of piece ``i`` for ``project[order]``, as parts stacked top to bottom; their missing calls."""
        start, stop, cols, _ = pieces[i]
        if held is None:
            return [read(project[order], start, stop)[:, cols]], None
        if every:
            return [held[i].g, others[i]], [held[i].missing, None]
        return [held[i].g[fitted], others[i]], None

    def run(bounds: tuple[int, int]) -> np.ndarray:
        """The scores over the kept SNPs ``lo:hi``."""
        lo, hi = bounds
        projector = Projector(len(project), fit.mean, fit.components(), lo)
        for i, (_, _, _, part) in enumerate(pieces):
            a, b = max(part.start, lo), min(part.stop, hi)
            if a < b:
                parts, missing = piece(i)
                if (a, b) != (part.start, part.stop):
                    parts, missing = [x[:, a - part.start : b - part.start] for x in parts], None
                projector.add(parts, missing)
        return projector.result()

    half = half_point(len(fit.keep))
    first, second = _both(run, [(0, half), (half, len(fit.keep))], held is not None)
    scores = np.empty((len(project), fit.loadings.shape[0]))
    scores[order] = first + second
    return scores
