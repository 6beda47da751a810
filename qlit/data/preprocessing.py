"""Feature preprocessing whose fitted state is plain tensors.

The state goes into checkpoints and exported models as tensors, so loading it needs no pickle.
"""

from __future__ import annotations

import numpy as np
import torch

from qlit.data.shared import array_key, remembered
from qlit.errors import QlitError


def check_components(n_components: int | None, n_train: int, fold: int) -> None:
    """Refuse a PCA of more components than a fold's ``n_train`` training rows can give."""
    if n_components is not None and n_components >= n_train:
        raise QlitError(
            f"n_components={n_components} is not below the {n_train} training rows of fold {fold} "
            f"(PCA of n rows has at most n - 1 informative components); use n_components <= {n_train - 1} "
            "or more data"
        )


class Preprocessor:
    """Optional mean imputation, then optional PCA, then standardisation, all fit on training rows only.

    The imputation means are kept beside ``state`` (``impute_mean``), not in it: ``state`` holds only
    the PCA and scaler tensors that checkpoints and exported models know; a data module that imputes
    saves and restores the means itself.

    Args:
        n_components: Number of principal components to keep, or ``None`` to skip PCA.
        impute: ``"mean"``: a missing value (NaN) becomes its column's mean over the rows `fit` is
            given; ``None``: no imputation.
        columns: Column names, for the message when a column has no value to impute from.
        source: The data's name (a file), for that message.
    """

    def __init__(
        self,
        n_components: int | None = None,
        impute: str | None = None,
        columns: list[str] | None = None,
        source: str = "the data",
    ) -> None:
        self.n_components = n_components
        self.impute = impute
        self.columns = columns
        self.source = source
        self.state: dict[str, torch.Tensor] = {}
        self.impute_mean: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        return bool(self.state)

    def fit(self, x: np.ndarray) -> Preprocessor:
        """Fit imputation and PCA (if any) and the scaler on ``x``, the training rows; returns ``self``.

        Raises:
            QlitError: with ``impute="mean"``, a column has no value in ``x`` to take the mean of.
        """
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        x = np.asarray(x, dtype=np.float64)
        means = None
        if self.impute == "mean":
            counts = (~np.isnan(x)).sum(axis=0)
            if (counts == 0).any():
                c = int(np.flatnonzero(counts == 0)[0])
                name = self.columns[c] if self.columns is not None else f"feature {c}"
                raise QlitError(f"{self.source}: column {name!r} has no value in the training rows to impute from")
            means = np.nansum(x, axis=0) / counts
            x = np.where(np.isnan(x), means, x)
        state: dict[str, torch.Tensor] = {}
        if self.n_components is not None:
            pca = PCA(n_components=self.n_components, svd_solver="full").fit(x)
            state["pca_mean"] = torch.from_numpy(pca.mean_)
            state["pca_components"] = torch.from_numpy(pca.components_)
            x = pca.transform(x)
        scaler = StandardScaler().fit(x)
        state["scale_mean"] = torch.from_numpy(scaler.mean_)
        state["scale_std"] = torch.from_numpy(scaler.scale_)
        self.state, self.impute_mean = state, means
        return self

    def fit_once(self, x: np.ndarray) -> Preprocessor:
        """`fit`, or the state an equal fit (same settings, same rows) left earlier in the command (`shared_data`)."""

        def fitted() -> tuple[dict[str, torch.Tensor], np.ndarray | None]:
            self.fit(x)
            return self.state, self.impute_mean

        settings = (type(self).__qualname__, self.n_components, self.impute, tuple(self.columns or ()))
        self.state, self.impute_mean = remembered(("fit", settings, array_key(np.asarray(x))), fitted)
        return self

    def transform(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Apply the fitted transform; returns float32 features."""
        if not self.fitted:
            raise RuntimeError("Preprocessor.transform called before fit or load_state_dict")
        array = np.array(x, dtype=np.float64)  # a copy: pandas 3 hands out read-only arrays
        if self.impute_mean is not None:
            array = np.where(np.isnan(array), self.impute_mean, array)
        t = torch.as_tensor(array)
        if "pca_components" in self.state:
            t = (t - self.state["pca_mean"]) @ self.state["pca_components"].T
        return ((t - self.state["scale_mean"]) / self.state["scale_std"]).float()

    @property
    def in_features(self) -> int:
        """Number of raw input columns the fitted transform expects."""
        key = "pca_mean" if "pca_mean" in self.state else "scale_mean"
        return int(self.state[key].numel())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a saved ``state``; the imputation means are cleared (their owner restores its own)."""
        self.state = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.items()}
        self.impute_mean = None
