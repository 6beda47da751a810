"""PLINK input at 1000 Genomes scale: memory and time of per-fold QC + PCA, and agreement with references.

On a simulated 2,504 x 1,000,000 fileset (written once by `qlit.data.genotype_sim`, about 600 MB of
``.bed``, reused when present), each measurement in a child process of its own so its peak resident
memory is its own:

- ``read``: one full read of the ``.bed`` into int8 with bed-reader, the I/O floor (again after the
  other stages, since it moves with the machine's state: the ratios are given against both);
- ``folds``: building `qlit.data.PlinkDataModule` and ``setup("fit")`` for each of 5 folds (MAF filter,
  standardisation and streamed randomized PCA on the training rows, every individual projected), with
  the power iterations each fold's PCA made before its stopping rule held (``pca_tolerance``);
- ``sklearn``: the same PCA against scikit-learn's ``PCA(svd_solver="randomized")`` and an exact
  eigendecomposition on the first 50,000 SNPs (in memory as float64);
- ``plink2``: ``plink2 --maf 0.01 --pca approx`` on the whole fileset against qlit's PCA fit on every
  individual, if ``plink2`` is installed (Debian: ``apt-get install plink2``);
- with ``--reference DIR`` (a folder holding another ``qlit`` package, e.g. the last commit's:
  ``git archive HEAD qlit | tar -x -C DIR``), ``folds`` again with that code, in the same run, and the
  |correlation| of each fold's PCA scores (every individual, per component) between the two.

``--stages`` picks some of the stages (e.g. ``read,folds``).

Run it under the shared lock, one timing benchmark at a time on the machine:

    flock /tmp/qlit-bench.lock python benchmarks/genotypes.py --data /work/bench_data/sim1kg_1m/sim1kg

Ratios are measured in one run; absolute times depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def _abs_corr(a: np.ndarray, b: np.ndarray) -> list[float]:
    return [float(abs(np.corrcoef(a[:, k], b[:, k])[0, 1])) for k in range(a.shape[1])]


def stage_read(prefix: str, **_) -> dict:
    from bed_reader import open_bed

    start = time.perf_counter()
    x = open_bed(f"{prefix}.bed").read(dtype="int8")
    return {"seconds": time.perf_counter() - start, "shape": list(x.shape), "peak_rss_gb": _peak_rss_gb()}


def stage_folds(prefix: str, folds: int, n_components: int, scores: str | None = None, **_) -> dict:
    import qlit.data.plink as plink
    from qlit.data.plink import PlinkDataModule

    times, kept, fold_scores, iterations = [], [], {}, []
    fit = plink.fit_genotype_pca

    def counted(*args, **kwargs):  # what each fold's PCA did (older code: no such attributes)
        result = fit(*args, **kwargs)
        iterations.append([getattr(result, "iterations", None), getattr(result, "error", None)])
        return result

    plink.fit_genotype_pca = counted
    start = time.perf_counter()
    for fold in range(folds):
        t0 = time.perf_counter()
        dm = PlinkDataModule(f"{prefix}.bed", f"{prefix}.panel", n_components=n_components, num_folds=folds, fold=fold)
        dm.setup("fit")
        times.append(time.perf_counter() - t0)
        kept.append(dm.raw_features)
        fold_scores[f"fold{fold}"] = dm.x
    total = time.perf_counter() - start
    t0 = time.perf_counter()
    dm.fileset.sha256()
    if scores:
        np.savez(scores, **fold_scores)
    return {
        "code": str(Path(sys.modules["qlit"].__file__).parents[1]),
        "seconds": total,
        "per_fold": times,
        "snps_kept": kept,
        "iterations_and_error": iterations,
        "hash_seconds": time.perf_counter() - t0,
        "peak_rss_gb": _peak_rss_gb(),
    }


def _qlit_pca_all_rows(read, n_snps: int, n_rows: int, n_components: int, min_maf: float):
    from qlit.data.genotype_pca import fit_genotype_pca

    start = time.perf_counter()
    fit = fit_genotype_pca(read, n_snps, np.arange(n_rows), n_components, min_maf=min_maf)
    return fit, time.perf_counter() - start


def stage_sklearn(prefix: str, subset: int, n_components: int, min_maf: float, **_) -> dict:
    from bed_reader import open_bed
    from sklearn.decomposition import PCA

    g = open_bed(f"{prefix}.bed").read(index=np.s_[:, :subset], dtype="int8", order="C")

    def read(rows, start, stop):
        return g[rows, start:stop]

    fit, ours = _qlit_pca_all_rows(read, subset, len(g), n_components, min_maf)
    x = g[:, fit.keep].astype(np.float64)
    x = np.where(x < 0, 0.0, (x - fit.mean) / fit.scale)  # the same QC and standardisation
    start = time.perf_counter()
    scores = PCA(n_components=n_components, svd_solver="randomized", random_state=0).fit_transform(x)
    theirs = time.perf_counter() - start
    start = time.perf_counter()
    values, vectors = np.linalg.eigh(x @ x.T)  # exact: the Gram matrix of 2,504 rows is small
    exact_seconds = time.perf_counter() - start
    exact = vectors[:, ::-1][:, :n_components] * np.sqrt(np.maximum(values[::-1][:n_components], 0))
    return {
        "snps": subset,
        "snps_kept": int(len(fit.keep)),
        "qlit_seconds": ours,
        "sklearn_seconds": theirs,
        "exact_seconds": exact_seconds,
        "qlit_vs_sklearn_abs_corr": _abs_corr(fit.scores, scores),
        "qlit_vs_exact_abs_corr": _abs_corr(fit.scores, exact),
        "sklearn_vs_exact_abs_corr": _abs_corr(scores, exact),
    }


def stage_plink2(prefix: str, n_components: int, min_maf: float, **_) -> dict:
    exe = shutil.which("plink2")
    if exe is None:
        return {"available": False, "why": "plink2 not installed (Debian: apt-get install plink2)"}
    from qlit.data.plink_files import PlinkFileset

    with tempfile.TemporaryDirectory() as tmp:
        command = [exe, "--bfile", prefix, "--maf", str(min_maf), "--pca", "approx", str(n_components),
                   "--threads", str(os.cpu_count()), "--out", f"{tmp}/pca"]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        theirs = time.perf_counter() - start
        if done.returncode != 0:
            failed = done.stdout[-2000:] + done.stderr[-2000:]
            return {"available": True, "failed": failed, "command": " ".join(command)}
        lines = Path(f"{tmp}/pca.eigenvec").read_text().splitlines()
    fileset = PlinkFileset(f"{prefix}.bed")
    order = {iid: i for i, iid in enumerate(fileset.iid)}
    header = lines[0].split()
    iid_col = header.index("IID")
    rows = [line.split() for line in lines[1:]]
    vectors = np.zeros((len(rows), n_components))
    for r in rows:
        vectors[order[r[iid_col]]] = [float(v) for v in r[iid_col + 1 : iid_col + 1 + n_components]]
    fit, ours = _qlit_pca_all_rows(fileset.read, fileset.n_snps, fileset.n_individuals, n_components, min_maf)
    return {
        "available": True,
        "version": subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip(),
        "plink2_seconds": theirs,
        "qlit_seconds": ours,
        "qlit_vs_plink2_abs_corr": _abs_corr(fit.scores, vectors),
        "peak_rss_gb": _peak_rss_gb(),
    }


STAGES = {"read": stage_read, "folds": stage_folds, "sklearn": stage_sklearn, "plink2": stage_plink2}


def _child(stage: str, args: argparse.Namespace, root: str | None = None, scores: str | None = None) -> dict:
    command = [sys.executable, __file__, "--stage", stage, "--data", args.data, "--folds", str(args.folds),
               "--n-components", str(args.n_components), "--subset", str(args.subset), "--min-maf", str(args.min_maf)]
    command += ["--root", root] if root else []
    command += ["--scores", scores] if scores else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"stage {stage} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(results: dict, args: argparse.Namespace) -> None:
    """Print the table and comparisons of the stages that ran."""
    read, folds = results.get("read"), results.get("folds")
    if read or folds:
        rows, snps = read["shape"] if read else (args.individuals, args.snps)
        print(f"\n| {rows:,} x {snps:,}, {args.folds} folds, n_components={args.n_components} | seconds | peak RSS |")
        print("|---|---|---|")
    if read:
        print(f"| one full read of the .bed (int8, the I/O floor) | {read['seconds']:.1f} | "
              f"{read['peak_rss_gb']:.2f} GB |")
    after = results.get("read_after")
    if after:
        print(f"| the same read again, after the other stages | {after['seconds']:.1f} | {after['peak_rss_gb']:.2f} GB |")
    floors = [r["seconds"] for r in (read, after) if r]
    runs = [(name, results[key]) for name, key in (("", "folds"), ("reference code: ", "reference")) if key in results]
    for name, run in runs:
        seconds = run["seconds"]
        ratio = f" ({' / '.join(f'{seconds / f:.1f}' for f in floors)}x the floor)" if floors else ""
        print(f"| {name}load + QC + PCA, all {args.folds} folds | {run['seconds']:.1f}{ratio} | "
              f"{run['peak_rss_gb']:.2f} GB |")
        print(f"| {name}per fold | {', '.join(f'{t:.1f}' for t in run['per_fold'])} | |")
    if folds:
        print(f"| SHA-256 of .bed/.bim/.fam (split identity, once per setup) | {folds['hash_seconds']:.1f} | |")
        print(f"\nSNPs kept by min_maf={args.min_maf}: {folds['snps_kept']}")
        made = ", ".join(f"{i} ({e:.1e})" if e == e else f"{i} (cap)" for i, e in folds["iterations_and_error"])
        print(f"power iterations per fold (estimated sine of the worst component's error): {made}")
    if "reference" in results:
        ref = results["reference"]
        worst = np.min(ref["abs_corr"], axis=0)
        print(f"reference code {ref['code']}: SNPs kept {ref['snps_kept']}; |corr| of each fold's scores against "
              f"it, lowest over folds per component: {', '.join(f'{c:.6f}' for c in worst)}")
        for fold, corr in enumerate(ref["abs_corr"]):
            print(f"  fold {fold}: 1 - |corr| per component {', '.join(f'{1 - c:.1e}' for c in corr)}")
    sk = results.get("sklearn")
    if sk:
        corr = ", ".join(f"{c:.4f}" for c in sk["qlit_vs_sklearn_abs_corr"])
        exact = ", ".join(f"{c:.4f}" for c in sk["qlit_vs_exact_abs_corr"])
        sk_exact = ", ".join(f"{c:.4f}" for c in sk["sklearn_vs_exact_abs_corr"])
        ratio = sk["qlit_seconds"] / sk["sklearn_seconds"]
        print(f"\n{args.individuals:,} x {sk['snps']:,} ({sk['snps_kept']:,} kept): qlit {sk['qlit_seconds']:.1f} s, "
              f"scikit-learn randomized {sk['sklearn_seconds']:.1f} s (time ratio qlit/sklearn {ratio:.2f}), "
              f"exact eigh {sk['exact_seconds']:.1f} s")
        print(f"  |corr| per component: qlit vs sklearn {corr}; qlit vs exact {exact}; sklearn vs exact {sk_exact}")
    p2 = results.get("plink2")
    if p2 is None:
        return
    if not p2.get("available"):
        print(f"\nplink2: {p2['why']}")
    elif "failed" in p2:
        print(f"\nplink2 failed ({p2['command']}):\n{p2['failed']}")
    else:
        corr = ", ".join(f"{c:.4f}" for c in p2["qlit_vs_plink2_abs_corr"])
        print(f"\n{p2['version']}: --pca approx {p2['plink2_seconds']:.1f} s; "
              f"qlit on all rows {p2['qlit_seconds']:.1f} s "
              f"(time ratio qlit/plink2 {p2['qlit_seconds'] / p2['plink2_seconds']:.2f}); |corr| per component {corr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/bench_data/sim1kg_1m/sim1kg", help="fileset prefix (made if absent)")
    parser.add_argument("--snps", type=int, default=1_000_000, help="SNPs of a fileset made here")
    parser.add_argument("--individuals", type=int, default=2504)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--n-components", type=int, default=4)
    parser.add_argument("--subset", type=int, default=50_000, help="SNPs of the scikit-learn comparison")
    parser.add_argument("--min-maf", type=float, default=0.01)
    parser.add_argument("--stages", default="read,folds,sklearn,plink2", help="stages to run, comma-separated")
    parser.add_argument("--reference", help="folder holding another qlit package: folds again with it, compared")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--scores", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        if args.root:
            sys.path.insert(0, str(Path(args.root).resolve()))
        print(json.dumps(STAGES[args.stage](args.data, folds=args.folds, n_components=args.n_components,
                                            subset=args.subset, min_maf=args.min_maf, scores=args.scores)))
        return
    if not Path(f"{args.data}.bed").exists():
        from qlit.data.genotype_sim import write_fileset

        start = time.perf_counter()
        write_fileset(args.data, args.individuals, args.snps)
        print(f"wrote {args.data}.bed in {time.perf_counter() - start:.0f} s")
    size = Path(f"{args.data}.bed").stat().st_size
    print(f"fileset {args.data}: {size / 1e6:.0f} MB .bed; {os.cpu_count()} CPUs; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} (1, 5, 15 min)")
    stages = args.stages.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; choose from {sorted(STAGES)}")
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for stage in stages:  # each as it ends: a run cut short still shows what it measured
            results[stage] = _child(stage, args, scores=f"{tmp}/ours.npz" if stage == "folds" else None)
            print(f"{stage}: {json.dumps(results[stage])}", flush=True)
        if args.reference and "folds" in stages:
            results["reference"] = _child("folds", args, root=args.reference, scores=f"{tmp}/theirs.npz")
            ours, theirs = np.load(f"{tmp}/ours.npz"), np.load(f"{tmp}/theirs.npz")
            results["reference"]["abs_corr"] = [_abs_corr(ours[f], theirs[f]) for f in ours.files]
        if "read" in stages and len(stages) > 1:
            results["read_after"] = _child("read", args)
            print(f"read again: {json.dumps(results['read_after'])}", flush=True)
    _report(results, args)
    print(f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} (1, 5, 15 min)")
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main()
