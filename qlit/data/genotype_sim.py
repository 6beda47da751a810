"""Write a 1000-Genomes-like PLINK fileset (``.bed/.bim/.fam``) and sample sheet from qlit's simulator.

The 26 population codes of the 1000 Genomes Project, under its five super-populations, with its
phase 3 sample sizes (2,504 people; other sizes are scaled to them). Allele frequencies drift down a
tree (the Balding–Nichols model of `qlit.data.simulate`): root, the continental branches of
`qlit.data.simulate`, then a small drift (Fst 0.004–0.02, as between 1000 Genomes populations of
one continent) to each population, so the 26-population task is learnable but much harder than the
5-super-population one. ACB and ASW are African with European admixture; MXL, PUR, CLM and PEL are
admixed from African, European and Native-American-like branches in different proportions, each
person with their own. As in real data, some SNPs are rare or monomorphic (so the minor-allele-
frequency filter matters) and some calls are missing.

The ``.bed`` is written block by block of SNPs, so any size fits in memory::

    python -m qlit.data.genotype_sim --out data/sim1kg/sim1kg --snps 20000

writes ``sim1kg.bed``, ``sim1kg.bim``, ``sim1kg.fam`` and ``sim1kg.panel`` (columns ``sample pop
super_pop gender``, tab-separated, as ``integrated_call_samples_v3.20130502.ALL.panel``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from qlit.data.simulate import _TREE

# population: (super-population, 1000 Genomes phase 3 sample size, drift from its source)
POPULATIONS_1KG: dict[str, tuple[str, int, float]] = {
    "YRI": ("AFR", 108, 0.008), "LWK": ("AFR", 99, 0.012), "GWD": ("AFR", 113, 0.010),
    "MSL": ("AFR", 85, 0.010), "ESN": ("AFR", 99, 0.008), "ACB": ("AFR", 96, 0.006), "ASW": ("AFR", 61, 0.006),
    "CEU": ("EUR", 99, 0.006), "TSI": ("EUR", 107, 0.006), "FIN": ("EUR", 99, 0.014),
    "GBR": ("EUR", 91, 0.005), "IBS": ("EUR", 107, 0.006),
    "CHB": ("EAS", 103, 0.005), "JPT": ("EAS", 104, 0.010), "CHS": ("EAS", 105, 0.005),
    "CDX": ("EAS", 93, 0.012), "KHV": ("EAS", 99, 0.008),
    "GIH": ("SAS", 103, 0.008), "PJL": ("SAS", 96, 0.008), "BEB": ("SAS", 86, 0.008),
    "STU": ("SAS", 102, 0.008), "ITU": ("SAS", 102, 0.008),
    "MXL": ("AMR", 64, 0.010), "PUR": ("AMR", 104, 0.006), "CLM": ("AMR", 94, 0.006), "PEL": ("AMR", 85, 0.020),
}
SUPER_POPULATIONS = ("AFR", "EUR", "EAS", "SAS", "AMR")
# Mean ancestry of admixed populations over (AFR, EUR, NAT); individual proportions are Dirichlet around it.
_ADMIXED: dict[str, tuple[float, float, float]] = {
    "ACB": (0.88, 0.12, 0.0), "ASW": (0.76, 0.24, 0.0),
    "MXL": (0.05, 0.45, 0.50), "PUR": (0.15, 0.70, 0.15), "CLM": (0.10, 0.65, 0.25), "PEL": (0.03, 0.20, 0.77),
}
_CONCENTRATION = 8.0
_RARE, _MONOMORPHIC = 0.15, 0.03  # shares of SNPs with a rare alternative allele and with none
_MISSING_RATE = 0.005
_CODES = np.array([0b11, 0b10, 0b00, 0b01], dtype=np.uint8)  # A1 count 0, 1, 2, missing (index 3)
BED_MAGIC = bytes([0x6C, 0x1B, 0x01])


def sample_sizes(n_individuals: int) -> dict[str, int]:
    """People per population: 1000 Genomes' counts, scaled to ``n_individuals`` (each at least 1)."""
    real = np.array([size for _, size, _ in POPULATIONS_1KG.values()], dtype=float)
    if n_individuals < len(real):
        raise ValueError(f"n_individuals must be at least {len(real)} (one per population), got {n_individuals}")
    counts = np.maximum(1, np.floor(real * n_individuals / real.sum())).astype(int)
    for i in np.argsort(-(real * n_individuals / real.sum() - counts))[: n_individuals - counts.sum()]:
        counts[i] += 1
    return dict(zip(POPULATIONS_1KG, counts.tolist()))


def _drift(p: np.ndarray, fst: float, rng: np.random.Generator) -> np.ndarray:
    inner = (p > 0) & (p < 1)  # a fixed allele stays fixed
    out = p.copy()
    a, b = p[inner] * (1 - fst) / fst, (1 - p[inner]) * (1 - fst) / fst
    out[inner] = rng.beta(a, b)
    return out


def _frequencies(n_snps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    kind = rng.random(n_snps)
    root = rng.uniform(0.05, 0.95, n_snps)
    rare = kind < _RARE
    root[rare] = rng.uniform(0.0005, 0.01, rare.sum())
    root[kind > 1 - _MONOMORPHIC] = 0.0
    freqs = {"root": root}
    for node, (parent, fst) in _TREE.items():
        freqs[node] = _drift(freqs[parent], fst, rng)
    for name, (super_pop, _, fst) in POPULATIONS_1KG.items():
        if name not in _ADMIXED:
            freqs[name] = _drift(freqs[super_pop], fst, rng)
        else:  # the admixed population's own drift acts on each of its sources
            freqs[name] = np.stack([_drift(freqs[s], fst, rng) for s in ("AFR", "EUR", "NAT")])
    return freqs


def simulate_block(sizes: dict[str, int], n_snps: int, rng: np.random.Generator,
                   ancestry: dict[str, np.ndarray]) -> np.ndarray:
    """Genotypes (A1 allele counts, -127 missing) of everyone at ``n_snps`` new SNPs, int8."""
    freqs = _frequencies(n_snps, rng)
    blocks = []
    for name, count in sizes.items():
        if name in _ADMIXED:
            cumulative = np.cumsum(ancestry[name], axis=1)
            genotype = np.zeros((count, n_snps), dtype=np.int8)
            for _copy in range(2):
                u = rng.random((count, n_snps))
                source = (u > cumulative[:, :1]).astype(np.int8) + (u > cumulative[:, 1:2])
                genotype += rng.random((count, n_snps)) < freqs[name][source, np.arange(n_snps)]
        else:
            genotype = rng.binomial(2, freqs[name], size=(count, n_snps)).astype(np.int8)
        blocks.append(genotype)
    genotypes = np.concatenate(blocks)
    genotypes[rng.random(genotypes.shape) < _MISSING_RATE] = -127
    return genotypes


def bed_bytes(genotypes: np.ndarray) -> bytes:
    """SNP-major PLINK .bed bytes (no magic number) of ``(individuals, SNPs)`` A1 counts, -127 missing."""
    n, m = genotypes.shape
    index = np.where(genotypes < 0, 3, genotypes).astype(np.uint8)
    codes = np.zeros(((n + 3) // 4 * 4, m), dtype=np.uint8)
    codes[:n] = _CODES[index]
    codes = codes.reshape(-1, 4, m)
    packed = codes[:, 0] | (codes[:, 1] << 2) | (codes[:, 2] << 4) | (codes[:, 3] << 6)
    return np.ascontiguousarray(packed.T).tobytes()


def write_fileset(out: str | Path, n_individuals: int = 2504, n_snps: int = 20000, seed: int = 0,
                  block_snps: int = 20000, quiet: bool = False) -> Path:
    """Simulate and write ``out.bed``, ``out.bim``, ``out.fam`` and ``out.panel``; returns the ``.bed`` path.

    Args:
        out: Path prefix of the fileset (its folder is created).
        n_individuals: People, spread over the 26 populations in 1000 Genomes' proportions.
        n_snps: SNPs.
        seed: Seed of the simulation (the same seed and sizes give the same files).
        block_snps: SNPs simulated and written at a time; memory is about 40 bytes per person and SNP of it.
        quiet: Print no progress.
    """
    prefix = str(out).removesuffix(".bed")
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = sample_sizes(n_individuals)
    ancestry = {
        name: rng.dirichlet(np.maximum(np.array(_ADMIXED[name]), 1e-3) * _CONCENTRATION, size=sizes[name])
        for name in sizes if name in _ADMIXED
    }
    samples, pops, genders = [], [], []
    for name, count in sizes.items():
        for i in range(count):
            samples.append(f"{name}{i + 1:04d}")
            pops.append(name)
            genders.append("female" if rng.random() < 0.5 else "male")
    with open(Path(f"{prefix}.fam"), "w") as fam:
        for sample, gender in zip(samples, genders):
            fam.write(f"{sample} {sample} 0 0 {1 if gender == 'male' else 2} -9\n")
    with open(Path(f"{prefix}.panel"), "w") as panel:
        panel.write("sample\tpop\tsuper_pop\tgender\n")
        for sample, pop, gender in zip(samples, pops, genders):
            panel.write(f"{sample}\t{pop}\t{POPULATIONS_1KG[pop][0]}\t{gender}\n")
    bases = np.array(list("ACGT"))
    with open(Path(f"{prefix}.bed"), "wb") as bed, open(Path(f"{prefix}.bim"), "w") as bim:
        bed.write(BED_MAGIC)
        for start in range(0, n_snps, block_snps):
            count = min(block_snps, n_snps - start)
            bed.write(bed_bytes(simulate_block(sizes, count, rng, ancestry)))
            first = rng.integers(0, 4, count)
            second = (first + rng.integers(1, 4, count)) % 4
            chrom = 1 + (np.arange(start, start + count) * 22) // n_snps
            bim.writelines(
                f"{c}\trs{start + j + 1}\t0\t{1000 * (start + j + 1)}\t{bases[a]}\t{bases[b]}\n"
                for j, (c, a, b) in enumerate(zip(chrom, first, second))
            )
            if not quiet:
                print(f"\r{start + count:,} / {n_snps:,} SNPs", end="", file=sys.stderr, flush=True)
    if not quiet:
        print(file=sys.stderr)
    return Path(f"{prefix}.bed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qlit.data.genotype_sim",
        description="Write a simulated 1000-Genomes-like PLINK fileset (.bed/.bim/.fam) and sample sheet (.panel).",
    )
    parser.add_argument("--out", required=True, help="path prefix, e.g. data/sim1kg/sim1kg")
    parser.add_argument("--individuals", type=int, default=2504, help="people (default 2504, as 1000 Genomes)")
    parser.add_argument("--snps", type=int, default=20000, help="SNPs (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    parser.add_argument("--block-snps", type=int, default=20000, help="SNPs simulated and written at a time")
    args = parser.parse_args(argv)
    if args.snps < 1 or args.individuals < len(POPULATIONS_1KG) or args.block_snps < 1:
        parser.error(f"need --snps >= 1, --individuals >= {len(POPULATIONS_1KG)} and --block-snps >= 1")
    bed = write_fileset(args.out, args.individuals, args.snps, args.seed, args.block_snps)
    size = os.path.getsize(bed)
    print(f"wrote {bed} ({size / 1e6:.1f} MB) with .bim, .fam and .panel: {args.individuals} people, {args.snps} SNPs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
