"""PLINK filesets: the simulator's writer, the streamed per-fold QC + PCA, sample sheets, predict, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import bed_reader
import numpy as np
import pytest
import torch
from bed_reader import open_bed

from qlit.cli import main
from qlit.data.genotype_pca import MISSING, fit_genotype_pca
from qlit.data.genotype_sim import BED_MAGIC, POPULATIONS_1KG, bed_bytes, sample_sizes, write_fileset
from qlit.data.plink import PlinkDataModule
from qlit.data.plink_files import PlinkFileset
from qlit.errors import QlitError
from tests.conftest import QUICK, one_line_error

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "genotypes_plink.yaml")
BUNDLED = Path(bed_reader.__file__).parent / "tests" / "data"  # real-format PLINK files shipped in bed-reader's wheel


@pytest.fixture(scope="module")
def fileset(tmp_path_factory) -> Path:
    """120 simulated people (26 populations) x 2,000 SNPs; returns the .bed."""
    return write_fileset(tmp_path_factory.mktemp("plink") / "sim", 120, 2000, seed=0, block_snps=700, quiet=True)


def copy_fileset(bed: Path, to: Path) -> Path:
    """Copy a .bed with its .bim, .fam and .panel to the prefix ``to``; returns the new .bed."""
    to.parent.mkdir(parents=True, exist_ok=True)
    for ext in (".bed", ".bim", ".fam", ".panel"):
        shutil.copy(bed.with_suffix(ext), to.with_suffix(ext))
    return to.with_suffix(".bed")


def write_bed(path: Path, genotypes: np.ndarray) -> None:
    path.write_bytes(BED_MAGIC + bed_bytes(genotypes))


def module(bed: Path, **kwargs) -> PlinkDataModule:
    kwargs.setdefault("n_components", 4)
    kwargs.setdefault("block_snps", 500)
    return PlinkDataModule(str(bed), str(bed.with_suffix(".panel")), **kwargs)


def standardised(genotypes: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    g = genotypes.astype(np.float64)
    return np.where(g < 0, 0.0, (g - mean) / scale)


def test_writer_gives_a_1000_genomes_like_fileset_that_bed_reader_reads(fileset, tmp_path):
    rng = np.random.default_rng(0)
    g = rng.integers(0, 3, (9, 7)).astype(np.int8)
    g[rng.random(g.shape) < 0.2] = MISSING
    shutil.copy(fileset.with_suffix(".fam"), tmp_path / "x.fam")
    (tmp_path / "x.fam").write_text("".join(f"f{i} i{i} 0 0 1 -9\n" for i in range(9)))
    (tmp_path / "x.bim").write_text("".join(f"1\trs{j}\t0\t{j}\tA\tG\n" for j in range(7)))
    write_bed(tmp_path / "x.bed", g)
    np.testing.assert_array_equal(open_bed(tmp_path / "x.bed").read(dtype="int8"), g)

    sizes = sample_sizes(2504)
    assert sum(sizes.values()) == 2504 and sizes["YRI"] == 108 and sizes["ASW"] == 61 and len(sizes) == 26
    assert {POPULATIONS_1KG[p][0] for p in sizes} == {"AFR", "EUR", "EAS", "SAS", "AMR"}
    bed = open_bed(fileset)
    x = bed.read(dtype="int8")
    assert x.shape == (120, 2000) and 0.002 < (x == MISSING).mean() < 0.01
    observed = np.where(x >= 0, x, 0).sum(0) / (2 * (x >= 0).sum(0))
    maf = np.minimum(observed, 1 - observed)
    assert (maf == 0).sum() > 20 and ((maf > 0) & (maf < 0.01)).sum() > 20  # the MAF filter has work to do
    panel = fileset.with_suffix(".panel").read_text().splitlines()
    assert panel[0].split("\t") == ["sample", "pop", "super_pop", "gender"] and len(panel) == 121
    assert [line.split("\t")[0] for line in panel[1:]] == list(bed.iid)


def test_streamed_pca_agrees_with_exact_pca_and_projects_exactly(fileset):
    source = PlinkFileset(fileset)
    rows = np.arange(120)
    fit = fit_genotype_pca(source.read, source.n_snps, rows, 4, block_snps=300)
    x = standardised(source.read(rows, 0, source.n_snps)[:, fit.keep], fit.mean, fit.scale)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    for k in range(4):
        assert abs(np.corrcoef(u[:, k], fit.scores[:, k])[0, 1]) >= 0.99, k
        assert abs(np.corrcoef(vt[k], fit.loadings[k])[0, 1]) >= 0.99, k
    np.testing.assert_allclose(fit.singular_values, s[:4], rtol=0.01)
    reread = fit_genotype_pca(source.read, source.n_snps, rows, 4, block_snps=300, cache_bytes=0)  # no int8 cache
    np.testing.assert_allclose(reread.scores, fit.scores, rtol=1e-5, atol=1e-5)
    # Rows outside the fit are projected exactly onto the fitted axes, with the fit rows' statistics.
    train, others = np.arange(0, 120, 2), np.arange(1, 120, 2)
    fit = fit_genotype_pca(source.read, source.n_snps, train, 4, project=others, block_snps=300)
    other = standardised(source.read(others, 0, source.n_snps)[:, fit.keep], fit.mean, fit.scale)
    np.testing.assert_allclose(fit.projected, other @ fit.loadings.T, rtol=1e-4, atol=1e-4)
    g = source.read(train, 0, source.n_snps)[:, fit.keep].astype(float)
    np.testing.assert_allclose(fit.mean, np.nanmean(np.where(g < 0, np.nan, g), axis=0), rtol=1e-12)


def test_fitted_state_is_unchanged_when_only_test_fold_genotypes_change(fileset, tmp_path):
    dm = module(fileset)
    dm.setup("fit")
    test_rows = dm.rows[dm.indices["test"]]
    train_rows = dm.rows[dm.indices["train"]]
    genotypes = open_bed(fileset).read(dtype="int8")
    rng = np.random.default_rng(1)

    def variant(name: str, rows: np.ndarray) -> PlinkDataModule:
        changed = genotypes.copy()
        changed[rows] = rng.integers(0, 3, (len(rows), genotypes.shape[1]))
        bed = copy_fileset(fileset, tmp_path / name / "sim")
        write_bed(bed, changed)
        other = module(bed)
        other.setup("fit")
        return other

    new_test = variant("test", test_rows)
    assert dm.preprocessor.state.keys() == new_test.preprocessor.state.keys()
    for key, value in dm.preprocessor.state.items():
        assert torch.equal(value, new_test.preprocessor.state[key]), key
    assert new_test.snps == dm.snps
    np.testing.assert_array_equal(new_test.features("train"), dm.features("train"))
    assert not np.allclose(new_test.features("test"), dm.features("test"))  # the change did reach the test rows
    assert new_test.split_identity()["data_sha256"] != dm.split_identity()["data_sha256"]
    # ...whereas changing a single training row does change the fitted state.
    new_train = variant("train", train_rows[:1])
    assert not torch.equal(new_train.preprocessor.state["pca_mean"], dm.preprocessor.state["pca_mean"])


def test_missing_calls_are_imputed_with_the_training_mean_only(fileset):
    dm = module(fileset, min_maf=0.0)
    dm.setup("fit")
    train, test = dm.rows[dm.indices["train"]], dm.rows[dm.indices["test"]]
    g = open_bed(fileset).read(dtype="float64")  # NaN for a missing call
    sid = list(open_bed(fileset).sid)
    kept = [sid.index(s) for s in dm.snps["id"]]
    means = np.nanmean(g[train][:, kept], axis=0)
    np.testing.assert_allclose(dm.preprocessor.state["pca_mean"].numpy(), means, rtol=1e-12)
    assert not np.allclose(means, np.nanmean(g[:, kept], axis=0))  # all rows would give other means
    # A test individual's missing call counts as the training mean: its scores are those of the raw
    # genotypes with that mean filled in, through the saved PCA state.
    person = next(i for i in range(len(test)) if np.isnan(g[test[i], kept]).any())
    raw = np.where(np.isnan(g[test[person], kept]), means, g[test[person], kept])
    expected = dm.preprocessor.transform(raw[None, :])
    np.testing.assert_allclose(dm.features("test")[person], expected[0].numpy(), rtol=1e-4, atol=1e-4)


def test_predict_matches_snps_by_id_flips_swapped_alleles_and_imputes_absent_ones(fileset, tmp_path, capsys):
    dm = module(fileset, strand_ambiguous="match")  # A/T and C/G SNPs too (their default is tested below)
    dm.setup("fit")
    base = dm._project_new(PlinkFileset(fileset)).numpy()
    np.testing.assert_allclose(base[dm.rows[dm.indices["test"]]], dm.features("test"), rtol=1e-4, atol=1e-4)

    # The same people with SNPs in reverse order and every other kept SNP's alleles swapped (2 - g).
    genotypes = open_bed(fileset).read(dtype="int8")
    bim = fileset.with_suffix(".bim").read_text().splitlines()
    kept = set(dm.snps["id"])
    swapped = {sid for k, sid in enumerate(dm.snps["id"]) if k % 2 == 0}
    lines, flipped = [], genotypes.copy()
    for j, line in enumerate(bim):
        chrom, sid, cm, bp, a1, a2 = line.split("\t")
        if sid in swapped:
            lines.append("\t".join([chrom, sid, cm, bp, a2, a1]))
            flipped[:, j] = np.where(genotypes[:, j] >= 0, 2 - genotypes[:, j], MISSING)
        else:
            lines.append(line)
    new = copy_fileset(fileset, tmp_path / "flip" / "new")
    new.with_suffix(".bim").write_text("\n".join(lines[::-1]) + "\n")
    write_bed(new, flipped[:, ::-1])
    capsys.readouterr()
    np.testing.assert_allclose(dm._project_new(PlinkFileset(new)).numpy(), base, rtol=1e-5, atol=1e-5)
    assert f"{len(swapped)} with swapped alleles" in capsys.readouterr().out

    # Drop a third of the kept SNPs: they count as the training mean.
    dropped = [sid for k, sid in enumerate(dm.snps["id"]) if k % 3 == 0]
    keep_cols = [j for j, line in enumerate(bim) if line.split("\t")[1] not in dropped]
    part = copy_fileset(fileset, tmp_path / "part" / "new")
    part.with_suffix(".bim").write_text("\n".join(bim[j] for j in keep_cols) + "\n")
    write_bed(part, genotypes[:, keep_cols])
    got = dm._project_new(PlinkFileset(part)).numpy()
    assert f"{len(dropped)} absent, imputed with the training mean" in capsys.readouterr().out
    sid = list(open_bed(fileset).sid)
    filled = genotypes[:, [sid.index(s) for s in dm.snps["id"]]].astype(np.float64)
    mean = dm.preprocessor.state["pca_mean"].numpy()
    filled = np.where(filled < 0, mean, filled)
    filled[:, [k for k in range(len(dm.snps["id"])) if k % 3 == 0]] = mean[::3]
    np.testing.assert_allclose(got, dm.preprocessor.transform(filled).numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, base, atol=1e-3)
    assert kept  # the model's SNPs came from the fileset


def test_sample_sheet_subset_any_separator_and_a_notice_for_the_unlabelled(fileset, tmp_path, capsys):
    panel = fileset.with_suffix(".panel").read_text().splitlines()
    sheet = tmp_path / "sheet.csv"  # comma-separated, 20 people missing, columns in another order
    sheet.write_text("\n".join(",".join(line.split("\t")[::-1]) for line in [panel[0], *panel[21:]]) + "\n")
    dm = PlinkDataModule(str(fileset), str(sheet), label_column="super_pop", num_folds=3)
    assert "qlit: 20 of 120 individuals" in capsys.readouterr().out
    assert dm.class_names == ["AFR", "AMR", "EAS", "EUR", "SAS"] and len(dm.rows) == 100
    subset = PlinkDataModule(str(fileset), str(fileset.with_suffix(".panel")), label_column="pop",
                             populations=["YRI", "CEU", "CHB"], num_folds=2)
    assert capsys.readouterr().out == ""  # a subset is chosen, not unlabelled
    assert subset.class_names == ["YRI", "CEU", "CHB"] and subset.num_classes == 3
    iid = open_bed(fileset).iid
    assert sorted({iid[r][:3] for r in subset.rows}) == ["CEU", "CHB", "YRI"]
    stray = tmp_path / "integrated.panel"  # a header ending in stray tabs, blanks between columns
    stray.write_text(panel[0] + "\t\t\n" + "\n".join(line.replace("\t", "  ") for line in panel[1:]) + "\n")
    assert PlinkDataModule(str(fileset), str(stray), num_folds=2).class_names == dm.class_names
    assert [subset.class_names[k] for k in subset.row_labels] == [iid[r][:3] for r in subset.rows]


def test_bundled_foreign_filesets_read_or_fail_with_one_line():
    foreign = PlinkFileset(BUNDLED / "plink_sim_10s_100v_10pmiss.bed")
    assert (foreign.n_individuals, foreign.n_snps) == (10, 100)
    fit = fit_genotype_pca(foreign.read, foreign.n_snps, np.arange(10), 2, min_maf=0.0, block_snps=30)
    x = standardised(foreign.read(np.arange(10), 0, 100)[:, fit.keep], fit.mean, fit.scale)
    u = np.linalg.svd(x, full_matrices=False)[0]
    assert abs(np.corrcoef(u[:, 0], fit.scores[:, 0])[0, 1]) >= 0.99
    for name, words in [
        ("small_too_short.bed", ["small_too_short.bed", "truncated"]),
        ("small_no_bim.bed", ["small_no_bim.bim", "beside it"]),
        ("small_no_fam.bed", ["small_no_fam.fam", "beside it"]),
        ("smallmode0.bed", ["smallmode0.bed", "individual-major"]),
    ]:
        with pytest.raises(QlitError) as err:
            PlinkFileset(BUNDLED / name)
        assert all(word in str(err.value) for word in words) and "\n" not in str(err.value), str(err.value)


def _bad(tmp: Path, fileset: Path, kind: str) -> list[str]:
    """Prepare one bad input in ``tmp``; return the data arguments that point qlit at it."""
    bed = copy_fileset(fileset, tmp / "bad" / "sim")
    panel = bed.with_suffix(".panel")
    if kind == "no-bim":
        bed.with_suffix(".bim").unlink()
    elif kind == "truncated":
        bed.write_bytes(bed.read_bytes()[:1000])
    elif kind == "not-plink":
        bed.write_bytes(b"#CHROM POS ID\n" * 100)
    elif kind == "no-column":
        panel.write_text(panel.read_text().replace("super_pop", "superpop"))
    elif kind == "no-match":
        panel.write_text("\n".join(line.replace("0", "X", 1) if i else line
                                   for i, line in enumerate(panel.read_text().splitlines())) + "\n")
    elif kind == "extra-fam-row":
        with bed.with_suffix(".fam").open("a") as fam:
            fam.write("EXTRA EXTRA 0 0 1 -9\n")
    elif kind == "extra-bim-row":
        with bed.with_suffix(".bim").open("a") as bim:
            bim.write("1\trsEXTRA\t0\t99999999\tA\tG\n")
    elif kind == "all-monomorphic":
        write_bed(bed, np.zeros((120, 2000), dtype=np.int8))
    return [f"--data.init_args.bed_file={bed}", f"--data.init_args.labels_file={panel}"]


@pytest.mark.parametrize(
    ("kind", "extra", "words"),
    [
        ("no-bim", [], ["sim.bim", "beside it"]),
        ("truncated", [], ["sim.bed", "truncated", "1000 bytes"]),
        ("extra-fam-row", [], ["sim.fam", "121 individuals", "sim.bed", "60003 bytes", "2000 SNPs", "117-120"]),
        ("extra-bim-row", [], ["sim.bed is truncated, or its .bim", "sim.bim has 1 row too many", "2001 SNPs",
                               "hold 2000 SNPs", "120 individuals", "sim.fam"]),
        ("not-plink", [], ["sim.bed", "not a PLINK .bed"]),
        ("no-column", [], ["sim.panel", "'super_pop'", "label_column"]),
        ("no-match", [], ["sim.panel", "no 'sample' matches", "sim.fam"]),
        ("fewer-than-num_folds", ["--data.init_args.label_column=pop"], ["num_folds=5", "sim.panel"]),
        ("unknown-population", ["--data.init_args.label_column=pop", "--data.init_args.populations=[YRI,ATLANTIS]"],
         ["ATLANTIS", "sim.panel"]),
        ("all-monomorphic", [], ["min_maf=0.01", "every SNP", "sim.bed"]),
        ("too-many-components", ["--data.init_args.min_maf=0.495", "--data.init_args.n_components=40"],
         ["n_components=40", "SNPs", "min_maf=0.495"]),
    ],
)
def test_bad_plink_input_is_one_line_naming_it_and_writes_nothing(fileset, tmp_path, capfd, kind, extra, words):
    args = ["fit", "--config", CONFIG, *_bad(tmp_path, fileset, kind), *extra, "--trainer.max_epochs=1"]
    one_line_error(args, capfd, words)
    assert not (tmp_path / "lightning_logs").exists() or not any((tmp_path / "lightning_logs").rglob("*.*"))


def test_fit_test_and_predict_a_new_fileset_through_the_cli(fileset, tmp_path, capfd):
    data = [f"--data.init_args.bed_file={fileset}", f"--data.init_args.labels_file={fileset.with_suffix('.panel')}",
            "--data.init_args.num_folds=3", "--data.init_args.block_snps=700"]
    args = ["--config", CONFIG, *data, *QUICK]
    main(["fit", *args, "--trainer.max_epochs=2"])
    run = tmp_path / "lightning_logs" / "genotypes_plink" / "version_0"
    main(["test", *args, "--ckpt_path=best"])
    # Other QC or PCA options give other features: refused (before, pca_iterations and min_maf passed the guard).
    for option, old, changed in [("pca_iterations", "4", "0"), ("min_maf", "0.01", "0.0101")]:
        one_line_error(["test", *args, "--ckpt_path=best", f"--data.init_args.{option}={changed}"], capfd,
                       ["best.ckpt", "other data", f"{option}={old}", f"{option}={changed}"])
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    state = checkpoint["PlinkDataModule"]
    assert len(state["snps"]["id"]) == state["raw_features"] == state["preprocessing"]["pca_mean"].numel()

    new = write_fileset(tmp_path / "new" / "new", 40, 2000, seed=0, block_snps=2000, quiet=True)  # same SNP ids
    capfd.readouterr()
    main(["predict", *args, "--ckpt_path=best", f"--data.predict_file={new}"])
    out = capfd.readouterr().out
    assert "SNPs found" in out and "wrote 40 predictions" in out
    rows = (run / "predictions.csv").read_text().splitlines()
    assert len(rows) == 41 and [r.split(",")[0] for r in rows[1:]] == list(open_bed(new).iid)

    far = copy_fileset(new, tmp_path / "far" / "far")
    far.with_suffix(".bim").write_text(far.with_suffix(".bim").read_text().replace("\trs", "\tchr1:"))
    before = sorted(p.name for p in run.iterdir())
    one_line_error(["predict", *args, "--ckpt_path=best", f"--data.predict_file={far}"], capfd,
                   ["far.bed", "shares no SNP"])
    assert sorted(p.name for p in run.iterdir()) == before


def test_predict_a_new_fileset_needs_only_the_checkpoint_whatever_the_fold(fileset, tmp_path):
    train = copy_fileset(fileset, tmp_path / "train" / "sim")
    data = [f"--data.init_args.bed_file={train}", f"--data.init_args.labels_file={train.with_suffix('.panel')}",
            "--data.init_args.num_folds=3", "--data.init_args.block_snps=700"]
    args = ["--config", CONFIG, *data, *QUICK]
    main(["fit", *args, "--trainer.max_epochs=1"])
    run = tmp_path / "lightning_logs" / "genotypes_plink" / "version_0"
    new = write_fileset(tmp_path / "new" / "new", 30, 2000, seed=1, block_snps=2000, quiet=True)
    predict = ["predict", *args, "--ckpt_path=best", f"--data.predict_file={new}"]
    main([*predict, "--data.fold=0"])
    main([*predict, "--data.fold=1"])  # another fold's QC and PCA would keep other SNPs and loadings
    assert (run / "predictions.csv").read_text() == (run / "predictions_1.csv").read_text(), "fold must not matter"
    train.parent.rename(tmp_path / "moved")  # the training fileset is gone: the checkpoint holds all predict needs
    main([*predict, "--data.fold=2"])
    outputs = [(run / name).read_text() for name in ("predictions.csv", "predictions_1.csv", "predictions_2.csv")]
    assert outputs[0] == outputs[1] == outputs[2] and len(outputs[0].splitlines()) == 31


def test_restored_checkpoint_projects_every_row_with_its_own_components(fileset):
    """Before: setup() refit the PCA and load_state_dict restored only the score scaler, so a command with
    other PCA options scored the test fold on other features than the training run (up to 1.5 sd apart)."""
    trained = module(fileset, pca_iterations=4)
    trained.setup("fit")
    state = trained.state_dict()
    for options in ({"pca_iterations": 0}, {"min_maf": 0.1}, {"pca_iterations": 4}):
        restored = module(fileset, **options)
        restored.setup("test")  # Lightning's order: setup, then the checkpoint's state
        restored.load_state_dict(state)
        for split in ("test", "val", "train"):
            np.testing.assert_array_equal(restored.features(split), trained.features(split), err_msg=str(options))
    early = module(fileset, pca_iterations=0)  # the state restored before setup: nothing is fit at all
    early.load_state_dict(state)
    early.setup("test")
    np.testing.assert_array_equal(early.features("test"), trained.features("test"))
    assert early.snps == trained.snps


def test_feature_options_are_part_of_the_data_identity(fileset):
    """Before: min_maf, block_snps and pca_iterations were outside the split identity the guard compares."""
    base = module(fileset)
    base.setup("fit")
    digest = base.split_identity()["data_sha256"]
    uncached = module(fileset, cache_gb=0.0)  # a memory knob only
    uncached.setup("fit")
    assert uncached.split_identity()["data_sha256"] == digest
    for options in ({"pca_iterations": 0}, {"min_maf": 0.02}, {"block_snps": 700}):
        other = module(fileset, **options)
        other.setup("fit")
        identity = other.split_identity()
        assert identity["data_sha256"] != digest, options
        name, value = next(iter(options.items()))
        assert identity["source"][name] == value


def _relabel_bim(bed: Path, to: Path, edit) -> Path:
    """A copy of ``bed``'s fileset at ``to`` whose .bim lines pass through ``edit(index, fields)``."""
    new = copy_fileset(bed, to)
    lines = [line.split("\t") for line in bed.with_suffix(".bim").read_text().splitlines()]
    new.with_suffix(".bim").write_text("".join("\t".join(edit(j, f)) + "\n" for j, f in enumerate(lines)))
    return new


def test_duplicate_snp_or_individual_ids_are_refused_in_one_line(fileset, tmp_path):
    """Before: both were accepted, and predict mapped two model SNPs to one column, reporting them all found."""
    dup_snp = _relabel_bim(fileset, tmp_path / "snp" / "sim", lambda j, f: [f[0], "rs1" if j == 5 else f[1], *f[2:]])
    with pytest.raises(QlitError) as err:
        PlinkFileset(dup_snp, "predict file")
    message = str(err.value)
    assert "\n" not in message and "sim.bim" in message and "'rs1'" in message and "lines 1 and 6" in message, message
    dup_iid = copy_fileset(fileset, tmp_path / "iid" / "sim")
    fam = dup_iid.with_suffix(".fam").read_text().splitlines()
    second = fam[1].split()
    fam[3] = " ".join([second[0], second[1], *fam[3].split()[2:]])
    dup_iid.with_suffix(".fam").write_text("\n".join(fam) + "\n")
    with pytest.raises(QlitError) as err:
        module(dup_iid)
    message = str(err.value)
    assert "\n" not in message and "sim.fam" in message and repr(second[1]) in message and "lines 2 and 4" in message


def test_strand_ambiguous_snps_are_left_out_of_matching_and_counted(fileset, tmp_path, capsys):
    """Before: an A/T or C/G SNP listed with swapped alleles was flipped, though it may be the other strand."""
    dm = module(fileset)
    dm.setup("fit")
    a1, a2 = dm.snps["allele_1"], dm.snps["allele_2"]
    ambiguous = [k for k in range(len(a1)) if {a1[k], a2[k]} in ({"A", "T"}, {"C", "G"})]
    assert 0 < len(ambiguous) < len(a1)
    names = {dm.snps["id"][k] for k in ambiguous}
    other_strand = _relabel_bim(fileset, tmp_path / "strand" / "sim",  # listed swapped, counts as they were
                                lambda j, f: [*f[:4], f[5], f[4]] if f[1] in names else f)
    capsys.readouterr()
    got = dm._project_new(PlinkFileset(other_strand)).numpy()
    out = capsys.readouterr().out
    assert f"{len(a1) - len(ambiguous)} of the model's {len(a1)} SNPs found (0 with swapped alleles" in out, out
    assert f"{len(ambiguous)} strand-ambiguous (A/T, C/G) left out" in out and out.count("\n") == 1, out
    sid = list(open_bed(fileset).sid)
    genotypes = open_bed(fileset).read(dtype="int8")[:, [sid.index(s) for s in dm.snps["id"]]].astype(np.float64)
    mean = dm.preprocessor.state["pca_mean"].numpy()
    filled = np.where(genotypes < 0, mean, genotypes)
    filled[:, ambiguous] = mean[ambiguous]  # as absent: the training mean
    np.testing.assert_allclose(got, dm.preprocessor.transform(filled).numpy(), rtol=1e-5, atol=1e-5)
    matched = module(fileset, strand_ambiguous="match")
    matched.setup("fit")
    capsys.readouterr()
    matched._project_new(PlinkFileset(other_strand))
    assert f"{len(ambiguous)} with swapped alleles, flipped" in capsys.readouterr().out
