"""Feature preprocessing whose fitted state is plain tensors.

The state goes into checkpoints and exported models as tensors, so loading it needs no pickle.
"""

from __future__ import annotations

import numpy as np
import torch


class Preprocessor:
    """Optional PCA followed by standardisation, fit on training rows only.

    Args:
        n_components: Number of principal components to keep, or ``None`` to skip PCA.
    """

    def __init__(self, n_components: int | None = None) -> None:
        self.n_components = n_components
        self.state: dict[str, torch.Tensor] = {}

    @property
    def fitted(self) -> bool:
        return bool(self.state)

    def fit(self, x: np.ndarray) -> Preprocessor:
        """Fit PCA (if any) and the scaler on ``x``; returns ``self``."""
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        x = np.asarray(x, dtype=np.float64)
        state: dict[str, torch.Tensor] = {}
        if self.n_components is not None:
            pca = PCA(n_components=self.n_components, svd_solver="full").fit(x)
            state["pca_mean"] = torch.from_numpy(pca.mean_)
            state["pca_components"] = torch.from_numpy(pca.components_)
            x = pca.transform(x)
        scaler = StandardScaler().fit(x)
        state["scale_mean"] = torch.from_numpy(scaler.mean_)
        state["scale_std"] = torch.from_numpy(scaler.scale_)
        self.state = state
        return self

    def transform(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Apply the fitted transform; returns float32 features."""
        if not self.fitted:
            raise RuntimeError("Preprocessor.transform called before fit or load_state_dict")
        t = torch.as_tensor(np.array(x, dtype=np.float64))  # a copy: pandas 3 hands out read-only arrays
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
        self.state = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.items()}
