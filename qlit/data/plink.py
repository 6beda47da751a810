"""Real genotype data: a PLINK fileset (``.bed/.bim/.fam``) labelled by a sample sheet, PCA per fold.

The fileset is read with bed-reader, a block of SNPs at a time, as int8; per fold, a minor-allele-
frequency filter, the ``2p`` / ``sqrt(2p(1 - p))`` standardisation and a streamed randomized PCA are
fit on the training rows only (`qlit.data.genotype_pca`), and every individual is projected onto
the fold's components. The fitted state is kept as the plain PCA + scaler tensors of
`qlit.data.preprocessing.Preprocessor` (``pca_mean`` is ``2p``, ``pca_components`` the loadings over
the scales), so checkpoints, `qlit.load_model` and INT8 artifacts take it as they take any other,
plus the kept SNPs' ids and alleles, by which new filesets are matched at predict time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from qlit.data.base import KFoldDataModule, _sha256
from qlit.data.genotype_pca import fit_genotype_pca
from qlit.data.genotype_projection import project_genotypes, projection_order
from qlit.data.plink_files import PlinkFileset, match_snps, read_sample_sheet
from qlit.data.preprocessing import Preprocessor, check_components
from qlit.data.sampling import TensorLoader
from qlit.data.shared import array_key, remembered
from qlit.errors import QlitError


class PlinkDataModule(KFoldDataModule):
    """Individuals of a PLINK fileset labelled by a sample sheet, reduced per fold by streamed PCA.

    Per fold, on the training rows only: SNPs with minor-allele frequency below ``min_maf`` are
    dropped, the rest centred by ``2p`` and scaled by ``sqrt(2p(1 - p))``, a missing call imputed
    with the training mean, and the leading ``n_components`` principal components found by a
    randomized solver that reads the ``.bed`` a block of SNPs at a time. Every individual, training
    rows included, is then projected on the fitted components by one function, and the scores are
    standardised (scaler fit on the training rows), one feature per qubit. Once a checkpoint's state
    is restored, every individual is projected again with the checkpoint's kept SNPs, loadings and
    means, so ``test`` and ``predict`` see exactly the features the model was trained and tested with,
    whatever this command's PCA options; ``min_maf``, ``block_snps`` and the ``pca_`` options are part
    of the data's identity, so the split guard refuses a checkpoint trained with others.

    Args:
        bed_file: The ``.bed`` of a PLINK fileset; its ``.bim`` and ``.fam`` lie beside it.
        labels_file: Sample sheet with a header row (CSV, TSV or whitespace-separated), e.g. the
            1000 Genomes ``integrated_call_samples_v3.20130502.ALL.panel``.
        sample_column: Column of sample ids, matched to the ``.fam`` IID.
        label_column: Column of labels, e.g. ``super_pop`` or ``pop``; any label names.
        populations: Labels to keep, in this order (others are left out); default all, sorted.
        n_components: Principal components kept, one per qubit.
        min_maf: Smallest minor-allele frequency (on the training rows) of a kept SNP, in ``[0, 0.5)``.
        block_snps: SNPs read at a time; memory is about ``individuals x block_snps x 5`` bytes.
        pca_iterations: The most power iterations of the randomized PCA (more: closer to exact, slower).
        pca_tolerance: Stop iterating once no component's estimated angle to the converged one has a sine
            above this (`qlit.data.genotype_pca.fit_genotype_pca`); ``0``: always ``pca_iterations``, as
            qlit did before the option (a checkpoint from then keeps its data identity under ``0``).
        cache_gb: A fold's genotypes up to this size (int8: individuals x SNPs bytes) are read once per
            fold and kept for the PCA's passes and projection; larger ones are re-read from the ``.bed``.
        strand_ambiguous: How predict treats the model's A/T and C/G SNPs, for which swapped alleles and
            the other strand look the same: ``"absent"`` (default) leaves them out of the matching and
            imputes them like absent SNPs; ``"match"`` matches them by their alleles as listed, for a
            fileset known to be on the training data's strand.
        **kwargs: Split, batch and predict options of `KFoldDataModule`; ``predict_file`` is the
            ``.bed`` of new individuals, whose SNPs are matched by id (swapped alleles flipped,
            absent SNPs imputed with the training mean).
    """

    def __init__(
        self,
        bed_file: str,
        labels_file: str,
        sample_column: str = "sample",
        label_column: str = "super_pop",
        populations: list[str] | None = None,
        n_components: int = 4,
        min_maf: float = 0.01,
        block_snps: int = 8192,
        pca_iterations: int = 4,
        pca_tolerance: float = 0.01,
        cache_gb: float = 3.0,
        strand_ambiguous: str = "absent",
        **kwargs,
    ) -> None:
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise QlitError(f"n_components must be an integer >= 1, got {n_components!r}")
        if not 0 <= min_maf < 0.5:
            raise QlitError(f"min_maf must be in [0, 0.5), got {min_maf!r}")
        if isinstance(block_snps, bool) or not isinstance(block_snps, int) or block_snps < 1:
            raise QlitError(f"block_snps must be an integer >= 1, got {block_snps!r}")
        if isinstance(pca_iterations, bool) or not isinstance(pca_iterations, int) or pca_iterations < 0:
            raise QlitError(f"pca_iterations must be an integer >= 0, got {pca_iterations!r}")
        if isinstance(pca_tolerance, bool) or not isinstance(pca_tolerance, (int, float)) or not 0 <= pca_tolerance < 1:
            raise QlitError(f"pca_tolerance must be a number in [0, 1), got {pca_tolerance!r}")
        self.pca_tolerance = float(pca_tolerance)
        self.bed_file, self.labels_file = str(bed_file), str(labels_file)
        self.sample_column, self.label_column = sample_column, label_column
        self.n_components, self.min_maf = n_components, min_maf
        if not cache_gb >= 0:
            raise QlitError(f"cache_gb must be >= 0, got {cache_gb!r}")
        if strand_ambiguous not in ("absent", "match"):
            raise QlitError(f"strand_ambiguous must be 'absent' or 'match', got {strand_ambiguous!r}")
        self.strand_ambiguous = strand_ambiguous
        self._restored = False  # a checkpoint's state was loaded: project with it, never refit
        self.block_snps, self.pca_iterations, self.cache_gb = block_snps, pca_iterations, cache_gb
        self.snps: dict[str, list[str]] = {}
        self._file_sha256: str | None = None
        self._predict_features: torch.Tensor | None = None
        if kwargs.get("predict_file") is not None and not Path(self.bed_file).exists():
            # New individuals need only the checkpoint (kept SNPs, loadings, scaler) and their own fileset.
            # Without num_features, num_classes and class_names the CLI builds the model from the checkpoint.
            self.fileset = None
            self.populations = list(populations) if populations is not None else []
            super().__init__(**kwargs)
            return
        self.fileset = PlinkFileset(bed_file)
        sheet = read_sample_sheet(labels_file, sample_column, label_column)
        labelled = [i for i, iid in enumerate(self.fileset.iid) if iid in sheet]
        if not labelled:
            raise QlitError(
                f"labels_file {labels_file}: no {sample_column!r} matches an individual (IID) of {self.fileset.fam} "
                f"(the .fam starts {', '.join(self.fileset.iid[:3])}; the sheet {', '.join(list(sheet)[:3])})"
            )
        found = sorted({sheet[self.fileset.iid[i]] for i in labelled})
        if populations is None:
            chosen = found
        else:
            chosen = [str(p) for p in populations]
            if len(set(chosen)) != len(chosen) or len(chosen) < 2:
                raise QlitError(f"populations must name at least two different labels, got {chosen}")
            unknown = [p for p in chosen if p not in found]
            if unknown:
                shown = ", ".join(found[:30]) + (", …" if len(found) > 30 else "")
                raise QlitError(
                    f"population {unknown[0]!r} labels no individual of {self.fileset.bed} in column "
                    f"{label_column!r} of {labels_file} (it holds {shown})"
                )
        if len(chosen) < 2:
            raise QlitError(
                f"labels_file {labels_file}: column {label_column!r} holds one label ({chosen[0]!r}); a classifier "
                "needs two"
            )
        unlabelled = self.fileset.n_individuals - len(labelled)
        if unlabelled:
            print(
                f"qlit: {unlabelled} of {self.fileset.n_individuals} individuals of {self.fileset.fam} have no "
                f"{label_column!r} in {labels_file} and are left out",
            )
        keep = [i for i in labelled if sheet[self.fileset.iid[i]] in chosen]
        self.rows = np.asarray(keep, dtype=np.int64)  # .fam rows of the individuals used
        self.row_labels = np.array([chosen.index(sheet[self.fileset.iid[i]]) for i in keep], dtype=np.int64)
        self.populations = chosen
        self.class_names = chosen
        self.num_classes = len(chosen)
        self.num_features = n_components
        self.raw_features = self.fileset.n_snps  # until setup: then the SNPs kept by the fold's QC
        super().__init__(**kwargs)

    def make_preprocessor(self) -> Preprocessor:
        return Preprocessor(n_components=self.n_components)

    def describe_source(self) -> dict[str, Any]:
        return {
            "bed_file": self.bed_file,
            "labels_file": self.labels_file,
            "label_column": self.label_column,
            "populations": list(self.populations),
            **self._feature_options(),
        }

    def _feature_options(self) -> dict[str, Any]:
        """The options besides the rows that change a fold's QC and PCA, hence its features.

        ``n_components`` is left out: it changes the model's width, which the checkpoint's shapes already
        pin, and a search may tune it. ``cache_gb`` only changes how the ``.bed`` is read. ``pca_tolerance: 0``
        is left out: the identity of data from before the option, which made ``pca_iterations`` always.
        """
        options = {"min_maf": float(self.min_maf), "block_snps": self.block_snps, "pca_iterations": self.pca_iterations}
        return {**options, "pca_tolerance": self.pca_tolerance} if self.pca_tolerance else options

    def source_name(self) -> str:
        return f"{self.labels_file} (column {self.label_column!r})"

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError("PlinkDataModule streams the .bed in setup(); it has no in-memory load()")

    def setup(self, stage: str | None = None) -> None:
        """Per-fold QC and streamed PCA on the training rows; for ``predict_file``, only open the new fileset.

        New individuals are projected in `predict_dataloader` with the checkpoint's kept SNPs, loadings
        and scaler (restored after `setup`), never with a PCA of this command's fold. If a checkpoint's
        state was restored before `setup`, the fold's rows are projected with it and nothing is fit.
        """
        if stage == "predict" and self.predict_file is not None:
            if self._predict_features is None:
                self._predict_fileset = PlinkFileset(self.predict_file, "predict file")
            return
        if self.fileset is None:
            self._need_checkpoint()
        if self.x is None:
            y = self.row_labels
            indices = self.split(y)
            if getattr(self, "inner_folds", None) is not None:  # nested cv (qlit tune): as the base class splits
                indices = self.inner_split(y, indices)
            if self._restored:
                scores = self._project_rows(self._training_columns(), indices["train"])
            else:
                scores = self._fit_once(indices["train"])
            self.x, self.y, self.indices = scores, y, indices
            self._split_identity = None

    def _fit_once(self, train: np.ndarray) -> np.ndarray:
        """`_fit`, or what an equal fit (same fileset, options and training rows) left earlier in the command."""
        bed, options = self.fileset.bed.resolve(), (self.n_components, self.split_seed, *self._feature_options().items())
        key = ("plink fit", str(bed), bed.stat().st_mtime_ns, options, array_key(self.rows[train]))
        fitted = lambda: (self._fit(train), self.preprocessor.state, self.snps, self.raw_features)  # noqa: E731
        scores, self.preprocessor.state, self.snps, self.raw_features = remembered(key, fitted)
        return scores

    def _fit(self, train: np.ndarray) -> np.ndarray:
        """QC, PCA and scaler on the ``train`` rows (indices into ``rows``); returns every row's PCA scores."""
        check_components(self.n_components, len(train), self.fold)
        fit = fit_genotype_pca(
            self.fileset.read, self.fileset.n_snps, self.rows[train], self.n_components, min_maf=self.min_maf,
            project=self.rows, block_snps=self.block_snps, power_iterations=self.pca_iterations,
            tolerance=self.pca_tolerance, seed=self.split_seed, on_kept=self._check_kept,
            cache_bytes=int(self.cache_gb * 2**30),
        )
        self.preprocessor.state = {
            "pca_mean": torch.from_numpy(fit.mean),
            "pca_components": torch.from_numpy(fit.components()),
        }
        # Training rows too are projected, not taken from the solver: every row's scores come from one projection,
        # here (of the genotypes the fit kept) and after a checkpoint's state is restored: they agree to the bit.
        scores = fit.projected
        train_scores = scores[train]
        std = train_scores.std(axis=0)
        self.preprocessor.state["scale_mean"] = torch.from_numpy(train_scores.mean(axis=0))
        self.preprocessor.state["scale_std"] = torch.from_numpy(np.where(std > 0, std, 1.0))
        self.snps = {
            "id": [self.fileset.sid[j] for j in fit.keep],
            "allele_1": [self.fileset.allele_1[j] for j in fit.keep],
            "allele_2": [self.fileset.allele_2[j] for j in fit.keep],
        }
        self.raw_features = len(fit.keep)
        return scores

    def _project_rows(self, columns: np.ndarray, train: np.ndarray) -> np.ndarray:
        """PCA scores of every used individual at the state's SNP ``columns``, in the fit's order: its bits."""
        state = self.preprocessor.state
        mean, components = state["pca_mean"].numpy(), state["pca_components"].numpy()

        def read(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
            return self.fileset.read_snps(rows, columns[start:stop])

        order = projection_order(self.rows[train], self.rows)
        scores = np.empty((len(self.rows), components.shape[0]))
        scores[order] = project_genotypes(read, self.rows[order], len(columns), mean, components, self.block_snps)
        return scores

    def _training_columns(self) -> np.ndarray:
        """The columns of the training fileset holding the state's SNPs, each with the alleles it was fit with."""
        where = {sid: j for j, sid in enumerate(self.fileset.sid)}
        columns = []
        for sid, a1, a2 in zip(self.snps["id"], self.snps["allele_1"], self.snps["allele_2"]):
            j = where.get(sid)
            if j is None or (self.fileset.allele_1[j], self.fileset.allele_2[j]) != (a1, a2):
                raise QlitError(
                    f"bed_file {self.fileset.bed} has no SNP {sid!r} with alleles {a1}/{a2}, which the checkpoint's "
                    "model was trained on: it is not the fileset the model was trained on"
                )
            columns.append(j)
        return np.asarray(columns, dtype=np.int64)

    def _need_checkpoint(self) -> None:
        raise QlitError(
            f"bed_file not found: {self.bed_file} (only qlit predict with --ckpt_path and a predict_file works "
            "without the training fileset)"
        )

    def ensure_fitted(self) -> None:
        if not self.preprocessor.fitted and self.fileset is None:
            self._need_checkpoint()
        super().ensure_fitted()

    def _check_kept(self, kept: int) -> None:
        if kept == 0:
            raise QlitError(
                f"min_maf={self.min_maf} filters out every SNP of {self.fileset.bed} on the training rows of fold "
                f"{self.fold}; use a smaller min_maf"
            )
        if self.n_components > kept:
            raise QlitError(
                f"n_components={self.n_components} is more than the {kept} SNPs of {self.fileset.bed} left after "
                f"min_maf={self.min_maf}; use n_components <= {kept}"
            )

    def _features(self, scores: np.ndarray | torch.Tensor) -> torch.Tensor:
        state = self.preprocessor.state
        return ((torch.as_tensor(scores, dtype=torch.float64) - state["scale_mean"]) / state["scale_std"]).float()

    def _dataset(self, split: str) -> TensorDataset:
        rows = self.indices[split]
        return TensorDataset(self._features(self.x[rows]), torch.as_tensor(self.y[rows]))

    def pca_scores(self) -> np.ndarray | None:
        """Every individual on the fold's first two principal components (fit on its training rows)."""
        if self.x is None or self.n_components < 2:
            return None
        return np.array(self.x[:, :2])

    def predict_dataloader(self) -> TensorLoader:
        if self.predict_file is None:
            return self._test_fold_loader(self.fileset.iid[self.rows[i]] for i in self.indices["test"])
        if self._predict_features is None:
            self.ensure_fitted()
            self._predict_features = self._project_new(self._predict_fileset)
        return self._loader(TensorDataset(self._predict_features))

    def check_predict_file(self, saved: dict[str, Any] | None) -> None:
        """Refuse a predict file sharing no SNP with the checkpoint's (preflight runs it before writing anything).

        Args:
            saved: The checkpoint's state of this data module (``None``: check against the fitted state).
        """
        if self.predict_file is None:
            return
        snps = saved.get("snps") if isinstance(saved, dict) else None
        match_snps(self._predict_fileset, snps if isinstance(snps, dict) else self.snps, self.strand_ambiguous)

    def _project_new(self, new: PlinkFileset) -> torch.Tensor:
        """Features of every individual of ``new`` under the fitted (or checkpoint-restored) state."""
        state = self.preprocessor.state
        matched = match_snps(new, self.snps, self.strand_ambiguous)
        columns, fitted, flip = matched.columns, matched.fitted, matched.flip
        ids = self.snps["id"]
        absent = len(ids) - len(columns) - matched.ambiguous
        other = f" or with other alleles ({matched.other_alleles})" if matched.other_alleles else ""
        ambiguous = (
            f"; {matched.ambiguous} strand-ambiguous (A/T, C/G) left out and imputed the same way (strand_ambiguous: "
            "match uses them)" if matched.ambiguous else ""
        )
        print(
            f"qlit: {new.bed}: {len(columns)} of the model's {len(ids)} SNPs found ({int(flip.sum())} with swapped "
            f"alleles, flipped); {absent} absent{other}, imputed with the training mean{ambiguous}",
        )
        order = np.argsort(columns)  # bed-reader reads increasing SNP indices fastest
        columns, fitted, flip = columns[order], fitted[order], flip[order]
        mean = state["pca_mean"].numpy()[fitted]
        components = state["pca_components"].numpy()[:, fitted]

        def read(rows: np.ndarray, start: int, stop: int) -> np.ndarray:
            g = new.read_snps(rows, columns[start:stop])
            swap = flip[start:stop] & (g >= 0)
            return np.where(swap, 2 - g, g).astype(np.int8)

        rows = np.arange(new.n_individuals)
        scores = project_genotypes(read, rows, len(columns), mean, components, self.block_snps)
        self.predict_ids = list(new.iid)
        return self._features(scores)

    def data_sha256(self) -> str:
        """The fileset's bytes, the labels, which individuals of the ``.fam`` are used and the feature options.

        The options (`_feature_options`) belong here, not only in the readable source: the split guard
        compares this hash, and a checkpoint fit with other QC or PCA options has other features.
        """
        if self._file_sha256 is None:
            self._file_sha256 = self.fileset.sha256()
        options = json.dumps(self._feature_options(), sort_keys=True)
        return hashlib.sha256((self._file_sha256 + _sha256(self.rows, self.y) + options).encode()).hexdigest()

    def state_dict(self) -> dict[str, Any]:
        """The base state plus the kept SNPs' ids and alleles (lists of str), which predict matches on."""
        return {**super().state_dict(), "snps": {key: list(value) for key, value in self.snps.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        snps = state_dict.get("snps")
        if not isinstance(snps, dict) or sorted(snps) != ["allele_1", "allele_2", "id"]:
            raise QlitError("the checkpoint's PlinkDataModule state lacks the SNP ids and alleles of its training fold")
        width = self.preprocessor.in_features
        if any(len(snps[key]) != width for key in snps):
            raise QlitError(f"the checkpoint's SNP list does not match its preprocessing of {width} SNPs")
        self.snps = {key: [str(v) for v in value] for key, value in snps.items()}
        self.raw_features = width
        self._predict_features = None  # projected again under this state
        self._restored = True
        if self.fileset is not None and self.x is not None:
            # The fold's rows as the checkpoint's model saw them, not as this command's PCA would give them.
            self.x = self._project_rows(self._training_columns(), self.indices["train"])
        names = state_dict.get("class_names")
        if self.fileset is None and isinstance(names, (list, tuple)):
            self.class_names = self.populations = [str(n) for n in names]
            self.num_classes = len(self.class_names)
            self.num_features = self.preprocessor.state["scale_mean"].numel()
