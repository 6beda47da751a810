"""The streamed genotype PCA's stopping rule, its projection's bits, and the options that drive them."""

from __future__ import annotations

import numpy as np
import pytest

from qlit.data.genotype_pca import MISSING, allele_stats, fit_genotype_pca
from qlit.data.genotype_projection import project_genotypes, projection_order
from qlit.data.plink_files import PlinkFileset, _bim_columns
from qlit.errors import QlitError
from tests.data.test_plink import copy_fileset, fileset, module  # noqa: F401  (fileset: the shared fixture)


def genotypes(n: int, snps: int, populations: int, seed: int) -> np.ndarray:
    """int8 genotypes of ``populations`` groups with their own allele frequencies (none: one group), 1% missing."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 0.9, snps)
    groups = max(populations, 1)
    drift = rng.normal(0, 0.15, (groups, snps)) if populations else np.zeros((1, snps))
    freq = np.clip(base + drift, 0.02, 0.98)
    group = rng.integers(0, groups, n)
    g = rng.binomial(2, freq[group]).astype(np.int8)
    g[rng.random(g.shape) < 0.01] = MISSING
    return g


def exact_scores(g: np.ndarray, fit, k: int) -> np.ndarray:
    """Scores of the exact PCA (eigh of the Gram matrix) of the same QC and standardisation."""
    x = g[:, fit.keep].astype(np.float64)
    x = np.where(x < 0, 0.0, (x - fit.mean) / fit.scale)
    values, vectors = np.linalg.eigh(x @ x.T)
    return vectors[:, ::-1][:, :k] * np.sqrt(values[::-1][:k])


def reader(g: np.ndarray):
    return lambda rows, start, stop: g[rows, start:stop]


def abs_corr(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [abs(np.corrcoef(a[:, k], b[:, k])[0, 1]) for k in range(a.shape[1])]


def test_with_a_spectral_gap_it_stops_early_at_the_exact_components():
    g = genotypes(300, 3000, populations=4, seed=0)  # three strong components above the noise
    rows = np.arange(300)
    fit = fit_genotype_pca(reader(g), 3000, rows, 3, block_snps=700, power_iterations=6, tolerance=0.01)
    assert 1 <= fit.iterations < 6 and fit.error <= 0.01, (fit.iterations, fit.error)
    assert min(abs_corr(fit.scores, exact_scores(g, fit, 3))) >= 0.9999
    fixed = fit_genotype_pca(reader(g), 3000, rows, 3, block_snps=700, power_iterations=6, tolerance=0.0)
    assert fixed.iterations == 6 and np.isnan(fixed.error)  # tolerance 0: every iteration, as before the option
    assert min(abs_corr(fit.scores, fixed.scores)) >= 0.9999


def test_without_a_gap_it_iterates_to_the_cap():
    g = genotypes(200, 2000, populations=0, seed=1)  # one population: a flat noise spectrum
    fit = fit_genotype_pca(reader(g), 2000, np.arange(200), 3, block_snps=500, power_iterations=3, tolerance=0.01)
    assert fit.iterations == 3 and np.isnan(fit.error)


def test_projection_gives_the_same_bits_from_memory_from_the_bed_and_in_any_blocks():
    g = genotypes(90, 1500, populations=3, seed=2)
    fit_rows, everyone = np.arange(0, 90, 3)[::-1], np.arange(90)  # fit rows out of order, among the projected
    kept = fit_genotype_pca(reader(g), 1500, fit_rows, 2, project=everyone, block_snps=400, tolerance=0.01)
    reread = fit_genotype_pca(reader(g), 1500, fit_rows, 2, project=everyone, block_snps=400, tolerance=0.01,
                              cache_bytes=0)
    np.testing.assert_array_equal(kept.projected, reread.projected)
    order = projection_order(fit_rows, everyone)
    aligned = g[:, kept.keep]
    scores = np.empty_like(kept.projected)
    for block in (77, 512, 5000):  # how the SNPs are read does not matter
        scores[order] = project_genotypes(reader(aligned), everyone[order], len(kept.keep), kept.mean,
                                          kept.components(), block)
        np.testing.assert_array_equal(scores, kept.projected)
    x = aligned.astype(np.float64)
    expected = np.where(x < 0, 0.0, x - kept.mean) @ kept.components().T  # a missing call scores 0
    np.testing.assert_allclose(kept.projected, expected, rtol=1e-9, atol=1e-9)
    assert min(abs_corr(kept.projected[fit_rows], kept.scores)) >= 0.99999  # the solver's scores: the same loadings


def test_allele_stats_count_missing_calls_out():
    g = np.array([[0, 2, MISSING], [1, MISSING, MISSING], [2, 2, MISSING]], dtype=np.int8)
    p, count = allele_stats(np.asfortranarray(g))
    np.testing.assert_array_equal(count, [3, 2, 0])
    np.testing.assert_allclose(p[:2], [0.5, 1.0])
    assert np.isnan(p[2])


@pytest.mark.parametrize("bad", [-0.1, 1.0, "0.01", True, None])
def test_a_bad_pca_tolerance_is_one_line_naming_it(fileset, bad):  # noqa: F811
    with pytest.raises(QlitError) as err:
        module(fileset, pca_tolerance=bad)
    assert "pca_tolerance" in str(err.value) and repr(bad) in str(err.value) and "\n" not in str(err.value)


def test_pca_tolerance_0_keeps_the_data_identity_of_checkpoints_from_before_it(fileset):  # noqa: F811
    before = {"min_maf": 0.01, "block_snps": 500, "pca_iterations": 4}  # what qlit hashed before the option
    assert module(fileset, pca_tolerance=0)._feature_options() == before
    assert module(fileset)._feature_options() == {**before, "pca_tolerance": 0.01}


def test_a_plain_bim_is_read_as_bed_reader_reads_it_and_anything_else_by_bed_reader(fileset, tmp_path):  # noqa: F811
    from bed_reader import open_bed

    ours, theirs = PlinkFileset(fileset), open_bed(fileset)
    assert ours.sid == [str(v) for v in theirs.sid] and ours.allele_2 == [str(v) for v in theirs.allele_2]
    assert _bim_columns(fileset.with_suffix(".bim")) is not None
    for name, edit in [("spaced", lambda lines: [line.replace("\t", "  ") for line in lines]),
                       ("short", lambda lines: ["\t".join(lines[0].split("\t")[:5]), *lines[1:]])]:
        bad = copy_fileset(fileset, tmp_path / name / "sim")
        bim = bad.with_suffix(".bim")
        bim.write_text("\n".join(edit(bim.read_text().splitlines())) + "\n")
        assert _bim_columns(bim) is None  # bed-reader reads it, and refuses it as it always did
        with pytest.raises(QlitError) as err:
            PlinkFileset(bad)
        assert ".bim cannot be read" in str(err.value) and "\n" not in str(err.value), name
