import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from qlit.data import IrisDataModule, SNPDataModule
from qlit.data.sampling import TensorLoader
from qlit.data.simulate import POPULATIONS, simulate_null, simulate_populations
from qlit.data.snp import read_genotype_csv
from qlit.errors import QlitError


def hudson_fst(g1: np.ndarray, g2: np.ndarray) -> float:
    """Hudson's Fst (ratio of averages) from two genotype matrices."""
    p1, p2 = g1.mean(0) / 2, g2.mean(0) / 2
    n1, n2 = 2 * len(g1), 2 * len(g2)
    num = (p1 - p2) ** 2 - p1 * (1 - p1) / (n1 - 1) - p2 * (1 - p2) / (n2 - 1)
    den = p1 * (1 - p2) + p2 * (1 - p1)
    return float(num.sum() / den.sum())


def test_iris_defaults_are_binary_setosa_versicolor():
    dm = IrisDataModule()
    assert (dm.num_features, dm.num_classes, dm.class_names) == (4, 2, ["setosa", "versicolor"])
    dm.setup("fit")
    assert len(dm.y) == 100 and set(dm.y) == {0, 1}


def test_iris_three_classes_is_multiclass():
    dm = IrisDataModule(classes=["setosa", "versicolor", "virginica"])
    dm.setup("fit")
    assert dm.num_classes == 3 and len(dm.y) == 150


def test_folds_are_disjoint_stratified_and_cover_every_sample():
    tests = []
    for fold in range(5):
        dm = IrisDataModule(fold=fold)
        dm.setup("fit")
        idx = dm.indices
        assert not set(idx["train"]) & set(idx["val"])
        assert not (set(idx["train"]) | set(idx["val"])) & set(idx["test"])
        assert len(idx["train"]) + len(idx["val"]) + len(idx["test"]) == 100
        assert np.bincount(dm.y[idx["test"]]).tolist() == [10, 10]
        tests.append(idx["test"])
    assert sorted(np.concatenate(tests).tolist()) == list(range(100))


def test_scaler_is_fit_on_training_rows_only():
    dm = IrisDataModule(fold=1)
    dm.setup("fit")
    train = dm.x[dm.indices["train"]]
    assert torch.allclose(dm.preprocessor.state["scale_mean"], torch.from_numpy(train.mean(0)))
    assert not torch.allclose(dm.preprocessor.state["scale_mean"], torch.from_numpy(dm.x.mean(0)))
    x_train, _ = dm._dataset("train").tensors
    assert x_train.mean(0).abs().max() < 1e-5


def test_pca_is_fit_on_training_rows_only_and_state_round_trips():
    dm = SNPDataModule(n_individuals=200, n_snps=40, n_components=3)
    dm.setup("fit")
    train = dm.x[dm.indices["train"]]
    assert torch.allclose(dm.preprocessor.state["pca_mean"], torch.from_numpy(train.mean(0)))
    other = SNPDataModule(n_individuals=200, n_snps=40, n_components=3, fold=2)
    other.setup("fit")
    other.load_state_dict(dm.state_dict())
    rows = dm.x[:7]
    assert torch.equal(other.preprocessor.transform(rows), dm.preprocessor.transform(rows))
    assert dm._dataset("test").tensors[0].shape[1] == 3


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"classes": ["setosa", "daisy"]}, "daisy"),
        ({"fold": 5, "num_folds": 5}, "fold"),
        ({"num_folds": 1}, "num_folds"),
        ({"classes": ["setosa"]}, "setosa"),
    ],
)
def test_iris_bad_options_name_the_value(kwargs, culprit):
    with pytest.raises(QlitError, match=culprit):
        IrisDataModule(**kwargs)


def test_more_folds_than_class_members_is_a_clear_error():
    dm = SNPDataModule(n_individuals=20, n_snps=10, num_folds=5)
    with pytest.raises(QlitError, match="num_folds=5"):
        dm.setup("fit")


def test_genotype_reader_takes_a_byte_order_mark_an_id_column_and_spaces(tmp_path):
    plain = tmp_path / "plain.csv"
    plain.write_text("population,rs1,rs2\nAFR,0,1\nEUR,2,2\n")
    spreadsheet = tmp_path / "spreadsheet.csv"
    spreadsheet.write_bytes("\ufeffrs1, id ,population,rs2\r\n0,a,AFR,1\r\n\r\n 2 ,b, EUR ,2\r\n".encode())
    expected = read_genotype_csv(plain, ["AFR", "EUR"])
    for got, want in zip(read_genotype_csv(spreadsheet, ["AFR", "EUR"]), expected):
        np.testing.assert_array_equal(got, want)


def test_a_split_without_both_training_and_validation_rows_of_a_class_is_refused():
    dm = SNPDataModule(n_individuals=12, n_snps=10, n_components=2, num_folds=2)  # 2 of the last population
    with pytest.raises(QlitError, match="only 1 sample of class 'AFR' outside test fold 0"):
        dm.setup("fit")
    assert dm.x is None and dm.indices == {}, "a failed setup must leave nothing half-set"


def test_seeds_are_checked_at_the_bounds_numpy_takes():
    IrisDataModule(split_seed=2**32 - 1).setup("fit")
    for seed in (-1, 2**32, True, 1.5):
        with pytest.raises(QlitError, match="split_seed"):
            IrisDataModule(split_seed=seed)
    with pytest.raises(QlitError, match="data_seed"):
        SNPDataModule(data_seed=2**32)


def test_unknown_population_is_named():
    with pytest.raises(QlitError, match="MARS"):
        SNPDataModule(populations=["AFR", "MARS"])


def test_simulated_populations_match_published_fst():
    genotypes, labels = simulate_populations(2000, 2000, seed=3)
    by_pop = {name: genotypes[labels == k] for k, name in enumerate(POPULATIONS)}
    assert np.bincount(labels).tolist() == [400] * 5
    assert set(np.unique(genotypes)) <= {0, 1, 2}
    assert hudson_fst(by_pop["AFR"], by_pop["EUR"]) == pytest.approx(0.15, abs=0.02)
    assert hudson_fst(by_pop["AFR"], by_pop["EAS"]) == pytest.approx(0.19, abs=0.02)
    assert hudson_fst(by_pop["EUR"], by_pop["EAS"]) == pytest.approx(0.11, abs=0.02)
    assert hudson_fst(by_pop["EUR"], by_pop["SAS"]) < 0.06
    # AMR is admixed: closer to its sources than they are to each other.
    assert hudson_fst(by_pop["AMR"], by_pop["EUR"]) < hudson_fst(by_pop["AFR"], by_pop["EUR"])


def test_null_data_has_no_structure():
    genotypes, labels = simulate_null(1000, 50, 5, seed=0)
    assert np.bincount(labels).tolist() == [200] * 5
    freqs = np.stack([genotypes[labels == k].mean(0) for k in range(5)])
    assert np.abs(freqs - 1.0).max() < 0.35  # uniform 0/1/2 has mean 1 in every population


def test_snp_module_reduces_to_one_feature_per_component():
    dm = SNPDataModule(n_individuals=250, n_snps=30, n_components=4, structure="none")
    assert (dm.num_features, dm.num_classes, dm.raw_features) == (4, 5, 30)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 4) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_loaders_index_whole_batches_and_match_the_standard_loader():
    data = SNPDataModule(n_individuals=200, n_snps=20, n_components=3, batch_size=16)
    data.setup("fit")
    for loader in (data.train_dataloader(), data.val_dataloader(), data.test_dataloader()):
        assert isinstance(loader, TensorLoader) and loader._indexes_batches()
        standard = DataLoader(loader.dataset, batch_size=16, sampler=loader.sampler)
        ours = list(loader)
        theirs = list(standard)
        assert len(ours) == len(theirs) == len(loader)
        for a, b in zip(ours, theirs):
            assert type(a) is type(b) and all(torch.equal(p, q) for p, q in zip(a, b))
    # every training row once per epoch, none dropped from the last, smaller batch
    rows = torch.cat([x for x, _ in data.train_dataloader()])
    assert len(rows) == len(data.indices["train"])


def test_loader_falls_back_to_the_standard_path_where_it_cannot_index():
    dataset = TensorDataset(torch.arange(10.0)[:, None], torch.arange(10))
    workers = TensorLoader(dataset, batch_size=4, num_workers=1)
    custom = TensorLoader(dataset, batch_size=4, collate_fn=lambda rows: len(rows))
    assert not workers._indexes_batches() and not custom._indexes_batches()
    assert list(custom) == [4, 4, 2]
    assert [x.squeeze(-1).tolist() for x, _ in workers] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_genotype_file_labels_may_have_any_names(tmp_path):
    path = tmp_path / "g.csv"
    rows = [f"{'north' if i % 2 else 'south'}," + ",".join(str((i * j) % 3) for j in range(6)) for i in range(40)]
    path.write_text("population," + ",".join(f"rs{j}" for j in range(6)) + "\n" + "\n".join(rows) + "\n")
    dm = SNPDataModule(genotype_file=str(path), populations=["south", "north"], n_snps=6, n_components=2)
    dm.setup("fit")
    assert dm.class_names == ["south", "north"] and set(np.unique(dm.y)) == {0, 1}
    with pytest.raises(QlitError, match="line 2: population 'south' is not one of AFR, EUR"):
        SNPDataModule(genotype_file=str(path), populations=["AFR", "EUR"], n_snps=6, n_components=2).setup("fit")
    with pytest.raises(QlitError, match="unknown population 'south'"):  # the simulator knows its five only
        SNPDataModule(populations=["south", "north"])
