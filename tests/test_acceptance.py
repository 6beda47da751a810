"""Full trainings with the shipped configs, checked against the accuracies the README quotes.

Marked slow (minutes each on two CPU cores): ``pytest -m slow``.
"""

from pathlib import Path

import pytest
from sklearn.linear_model import LogisticRegression

from qlit.data import SNPDataModule
from tests.conftest import CONFIGS
from tests.test_cli import run, scalars

pytestmark = pytest.mark.slow


def fit_and_test(config: Path, experiment: str, *overrides: str) -> float:
    run("fit", "--config", str(config), *overrides)
    run("test", "--config", str(config), "--ckpt_path", "best", *overrides)
    return scalars(Path("lightning_logs") / experiment / "version_0")["test_acc"][-1].value


def test_iris_reaches_095():
    assert fit_and_test(CONFIGS / "iris.yaml", "iris") >= 0.95


def test_genomic_matches_logistic_regression_on_the_same_fold():
    acc = fit_and_test(CONFIGS / "genomic.yaml", "genomic")
    dm = SNPDataModule()
    dm.setup("fit")
    x_train, y_train = dm._dataset("train").tensors
    x_test, y_test = dm._dataset("test").tensors
    baseline = LogisticRegression(max_iter=2000).fit(x_train.numpy(), y_train.numpy()).score(x_test.numpy(), y_test.numpy())
    assert acc >= 0.70
    assert abs(acc - baseline) <= 0.05


def test_null_genotypes_stay_at_chance():
    # chance plus three binomial standard deviations of the 200 test rows, sqrt(0.16 / 200)
    assert fit_and_test(CONFIGS / "genomic.yaml", "genomic", "--data.init_args.structure=none") <= 0.285
