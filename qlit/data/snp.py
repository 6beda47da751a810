"""SNP genotypes of continental populations, reduced by PCA to one feature per qubit."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np

from qlit.data.base import KFoldDataModule
from qlit.data.preprocessing import Preprocessor
from qlit.data.simulate import POPULATIONS, simulate_null, simulate_populations
from qlit.errors import QlitError


def read_genotype_csv(path: str | Path, populations: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a genotype table: a header, one row per individual, a ``population`` column and 0/1/2 SNPs."""
    path = Path(path)
    if not path.is_file():
        raise QlitError(f"genotype file not found: {path}")
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if len(rows) < 2 or "population" not in rows[0]:
        raise QlitError(f"{path}: expected a header with a 'population' column and at least one individual")
    label_col = rows[0].index("population")
    genotypes, labels = [], []
    for line, row in enumerate(rows[1:], start=2):
        name = row[label_col].strip()
        if name not in populations:
            raise QlitError(f"{path}: line {line}: population {name!r} is not one of {', '.join(populations)}")
        values = [v.strip() for c, v in enumerate(row) if c != label_col]
        if any(v not in ("0", "1", "2") for v in values) or len(values) != len(rows[0]) - 1:
            raise QlitError(f"{path}: line {line}: genotypes must be 0, 1 or 2 in every SNP column")
        genotypes.append([int(v) for v in values])
        labels.append(populations.index(name))
    return np.array(genotypes, dtype=np.int8), np.array(labels)


class SNPDataModule(KFoldDataModule):
    """Genotypes (0/1/2 per SNP) labelled by population, reduced by PCA and standardised.

    By default the genotypes are simulated with the continental population structure of
    `qlit.data.simulate`. ``structure="none"`` gives the negative control: uniform random genotypes
    with random labels, on which the correct accuracy is chance.

    Args:
        populations: Population labels to use, a subset of AFR, EUR, EAS, SAS, AMR.
        n_individuals: Number of simulated individuals, balanced over the populations.
        n_snps: Number of simulated SNPs.
        n_components: Principal components kept, one per qubit.
        structure: ``"continental"`` (simulated population structure) or ``"none"`` (null data).
        data_seed: Seed of the simulation.
        genotype_file: Optional CSV of real genotypes (a ``population`` column and one 0/1/2 column
            per SNP) to use instead of the simulator.
        **kwargs: Split, batch and predict options of `KFoldDataModule`.
    """

    def __init__(
        self,
        populations: list[str] = list(POPULATIONS),  # noqa: B006
        n_individuals: int = 1000,
        n_snps: int = 100,
        n_components: int = 4,
        structure: Literal["continental", "none"] = "continental",
        data_seed: int = 0,
        genotype_file: str | None = None,
        **kwargs,
    ) -> None:
        populations = list(populations)
        unknown = [name for name in populations if name not in POPULATIONS]
        if unknown:
            raise QlitError(f"unknown population {unknown[0]!r}; choose from {', '.join(POPULATIONS)}")
        if len(set(populations)) != len(populations) or len(populations) < 2:
            raise QlitError(f"populations must name at least two different populations, got {populations}")
        if structure not in ("continental", "none"):
            raise QlitError(f"structure must be 'continental' or 'none', got {structure!r}")
        if n_snps < 1 or n_individuals < 1:
            raise QlitError(f"n_snps and n_individuals must be >= 1, got {n_snps!r} and {n_individuals!r}")
        if not 1 <= n_components <= n_snps:
            raise QlitError(f"n_components must be in 1..n_snps={n_snps}, got {n_components!r}")
        self.populations = populations
        self.n_individuals = n_individuals
        self.n_snps = n_snps
        self.n_components = n_components
        self.structure = structure
        self.data_seed = data_seed
        self.genotype_file = genotype_file
        self.class_names = populations
        self.num_classes = len(populations)
        self.num_features = n_components
        self.raw_features = n_snps
        super().__init__(**kwargs)

    def make_preprocessor(self) -> Preprocessor:
        return Preprocessor(n_components=self.n_components)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        if self.genotype_file is not None:
            genotypes, labels = read_genotype_csv(self.genotype_file, self.populations)
            if genotypes.shape[1] != self.n_snps:
                raise QlitError(f"{self.genotype_file}: {genotypes.shape[1]} SNP columns, but n_snps={self.n_snps}")
        elif self.structure == "none":
            genotypes, labels = simulate_null(self.n_individuals, self.n_snps, self.num_classes, self.data_seed)
        else:
            genotypes, labels = simulate_populations(self.n_individuals, self.n_snps, self.populations, self.data_seed)
        return genotypes.astype(np.float64), labels
