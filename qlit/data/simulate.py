"""Genotypes of five continental populations, simulated with real population structure.

Allele frequencies drift down a population tree under the Balding–Nichols model: a child
population's frequency is ``Beta(p (1 - F) / F, (1 - p) (1 - F) / F)`` around its parent's ``p``,
where ``F`` is the branch's drift. Between two leaves, Hudson's Fst is about half the drift summed
along the path joining them; the branch drifts are chosen so that this matches published pairwise
Fst for the 1000 Genomes super-populations (AFR–EUR ≈ 0.15, AFR–EAS ≈ 0.19, EUR–EAS ≈ 0.11,
EUR–SAS ≈ 0.04). AMR individuals are admixed: each has its own ancestry
proportions over AFR, EUR and a Native-American-like branch (NAT) that split from the East Asian
lineage, and each of their allele copies is drawn from one of those sources.
"""

from __future__ import annotations

import numpy as np

POPULATIONS: tuple[str, ...] = ("AFR", "EUR", "EAS", "SAS", "AMR")

# node: (parent, drift F on the branch from the parent)
_TREE: dict[str, tuple[str, float]] = {
    "AFR": ("root", 0.12),
    "OOA": ("root", 0.11),
    "WEA": ("OOA", 0.03),
    "EUR": ("WEA", 0.04),
    "SAS": ("WEA", 0.04),
    "EA": ("OOA", 0.06),
    "EAS": ("EA", 0.09),
    "NAT": ("EA", 0.20),
}
# Mean AMR ancestry over (AFR, EUR, NAT) and the Dirichlet concentration of individual proportions.
_AMR_SOURCES = ("AFR", "EUR", "NAT")
_AMR_MEAN = np.array([0.10, 0.50, 0.40])
_AMR_CONCENTRATION = 6.0
_MIN_FREQ = 0.01


def _drift(p: np.ndarray, fst: float, rng: np.random.Generator) -> np.ndarray:
    a = p * (1 - fst) / fst
    b = (1 - p) * (1 - fst) / fst
    return np.clip(rng.beta(a, b), _MIN_FREQ, 1 - _MIN_FREQ)


def allele_frequencies(n_snps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw allele frequencies for every node of the population tree."""
    freqs = {"root": rng.uniform(0.05, 0.95, size=n_snps)}
    for node, (parent, fst) in _TREE.items():  # parents come before children in _TREE
        freqs[node] = _drift(freqs[parent], fst, rng)
    return freqs


def simulate_populations(
    n_individuals: int, n_snps: int, populations: tuple[str, ...] | list[str] = POPULATIONS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a balanced sample of genotypes (0/1/2 copies of the alternative allele).

    Args:
        n_individuals: Total individuals, split as evenly as possible between the populations.
        n_snps: Number of SNPs.
        populations: Population names, a subset of ``POPULATIONS``; label ``k`` is ``populations[k]``.
        seed: Seed of the simulation.

    Returns:
        ``(genotypes, labels)``: an ``(n_individuals, n_snps)`` int8 matrix and the label indices.
    """
    rng = np.random.default_rng(seed)
    freqs = allele_frequencies(n_snps, rng)
    counts = np.full(len(populations), n_individuals // len(populations))
    counts[: n_individuals % len(populations)] += 1
    blocks, labels = [], []
    for label, (name, count) in enumerate(zip(populations, counts)):
        if name == "AMR":
            ancestry = rng.dirichlet(_AMR_MEAN * _AMR_CONCENTRATION, size=count)
            source_freqs = np.stack([freqs[s] for s in _AMR_SOURCES])  # (3, n_snps)
            genotype = np.zeros((count, n_snps), dtype=np.int8)
            for _copy in range(2):
                source = np.array([rng.choice(3, size=n_snps, p=a) for a in ancestry])
                genotype += rng.random((count, n_snps)) < source_freqs[source, np.arange(n_snps)]
        else:
            genotype = rng.binomial(2, freqs[name], size=(count, n_snps)).astype(np.int8)
        blocks.append(genotype)
        labels.append(np.full(count, label))
    return np.concatenate(blocks), np.concatenate(labels)


def simulate_null(n_individuals: int, n_snps: int, n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The prototype's data: uniform 0/1/2 genotypes and balanced labels unrelated to them.

    Kept as a negative control: the correct accuracy on it is chance, ``1 / n_classes``.
    """
    rng = np.random.default_rng(seed)
    genotypes = rng.integers(0, 3, size=(n_individuals, n_snps), dtype=np.int8)
    labels = rng.permutation(np.arange(n_individuals) % n_classes)
    return genotypes, labels
