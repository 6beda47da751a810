"""SNP genotypes of continental populations, reduced by PCA to one feature per qubit."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qlit.data.base import KFoldDataModule, check_seed, id_column
from qlit.data.preprocessing import Preprocessor
from qlit.data.shared import remembered
from qlit.data.simulate import POPULATIONS, simulate_null, simulate_populations
from qlit.data.tables import read_table
from qlit.errors import QlitError


def read_genotype_csv(path: str | Path, populations: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a genotype table: a header, one row per individual, a ``population`` column and 0/1/2 SNPs.

    The file is read by `qlit.data.tables.read_table` as text cells, as predict files are; an
    optional ``id`` column is skipped.

    Args:
        path: CSV file.
        populations: The populations to classify (any names); label ``k`` is ``populations[k]``.

    Returns:
        ``(genotypes, labels)``: an ``(individuals, SNPs)`` int8 matrix and the label indices.

    Raises:
        QlitError: naming the file (and line and column) when it cannot be read, has no
            ``population`` column or no individuals, or holds an unknown population or genotype.
    """
    path = Path(path)
    table = read_table(path, "genotype file", text_cells=True)
    header = table.columns
    if "population" not in header:
        found = f"its header starts {', '.join(header[:4])}" if header else "it is empty"
        raise QlitError(f"genotype file {path}: expected a header with a 'population' column, but {found}")
    if len(table.frame) == 0:
        raise QlitError(f"genotype file {path}: no individuals (expected one row per individual after the header)")
    cells = table.frame.to_numpy()
    label_col, id_col = header.index("population"), id_column(header)
    snp_cols = [c for c in range(len(header)) if c not in (label_col, id_col)]
    names = cells[:, label_col]
    unknown = ~np.isin(names, populations)
    if unknown.any():
        r = int(np.flatnonzero(unknown)[0])
        raise QlitError(
            f"{path}: {table.where(r)}: population {names[r]!r} is not one of {', '.join(populations)} "
            "(list the file's labels in populations)"
        )
    values = cells[:, snp_cols]
    bad = ~np.isin(values, ("0", "1", "2"))
    if bad.any():
        r, c = (int(i[0]) for i in np.nonzero(bad))
        raise QlitError(
            f"{path}: {table.where(r)}, column {header[snp_cols[c]]!r}: genotype {values[r, c]!r} is not 0, 1 or 2"
        )
    genotypes = values.astype(np.int64).astype(np.int8) if values.size else np.empty(values.shape, dtype=np.int8)
    labels = np.array([populations.index(name) for name in names], dtype=np.int64)
    return genotypes, labels


class SNPDataModule(KFoldDataModule):
    """Genotypes (0/1/2 per SNP) labelled by population, reduced by PCA and standardised.

    By default the genotypes are simulated with the continental population structure of
    `qlit.data.simulate`. ``structure="none"`` gives the negative control: uniform random genotypes
    with random labels, on which the correct accuracy is chance.

    Args:
        populations: Population labels to use: for the simulator a subset of AFR, EUR, EAS, SAS, AMR;
            with ``genotype_file``, the labels of its ``population`` column (any names).
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
        populations = [str(name) for name in populations]
        unknown = [name for name in populations if name not in POPULATIONS]
        if unknown and genotype_file is None:  # a genotype file's labels may have any names
            raise QlitError(f"unknown population {unknown[0]!r}; choose from {', '.join(POPULATIONS)}")
        if len(set(populations)) != len(populations) or len(populations) < 2:
            raise QlitError(f"populations must name at least two different populations, got {populations}")
        if structure not in ("continental", "none"):
            raise QlitError(f"structure must be 'continental' or 'none', got {structure!r}")
        if n_snps < 1 or n_individuals < 1:
            raise QlitError(f"n_snps and n_individuals must be >= 1, got {n_snps!r} and {n_individuals!r}")
        if not 1 <= n_components <= n_snps:
            raise QlitError(f"n_components must be in 1..n_snps={n_snps}, got {n_components!r}")
        check_seed("data_seed", data_seed)
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

    def describe_source(self) -> dict[str, Any]:
        if self.genotype_file is not None:
            return {"genotype_file": str(self.genotype_file), "populations": list(self.populations)}
        return {
            "simulated": self.structure,
            "populations": list(self.populations),
            "n_individuals": self.n_individuals,
            "n_snps": self.n_snps,
            "data_seed": self.data_seed,
        }

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        if self.genotype_file is not None:
            genotypes, labels = read_genotype_csv(self.genotype_file, self.populations)
            if genotypes.shape[1] != self.n_snps:
                raise QlitError(f"{self.genotype_file}: {genotypes.shape[1]} SNP columns, but n_snps={self.n_snps}")
            return genotypes.astype(np.float64), labels
        # The simulators give the last population n_individuals // len(populations) individuals, the fewest.
        fewest, k = self.n_individuals // self.num_classes, self.num_classes
        if fewest < self.num_folds:
            raise QlitError(
                f"n_individuals={self.n_individuals} simulates only {fewest} individuals of {self.populations[-1]}, "
                f"fewer than num_folds={self.num_folds}; with {k} populations use n_individuals >= {self.num_folds * k}"
            )
        if self.structure == "none":
            simulate = functools.partial(simulate_null, self.n_individuals, self.n_snps, self.num_classes, self.data_seed)
        else:
            simulate = functools.partial(
                simulate_populations, self.n_individuals, self.n_snps, self.populations, self.data_seed
            )
        key = ("simulated genotypes", self.structure, self.n_individuals, self.n_snps, tuple(self.populations),
               self.data_seed)  # fmt: skip
        genotypes, labels = remembered(key, simulate)  # the same cohort for every fold of one command
        return genotypes.astype(np.float64), labels
