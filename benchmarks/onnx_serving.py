"""Serve a trained model: ONNX Runtime against torch eager, and ``qlit serve`` under concurrent clients.

For one checkpoint (``--ckpt``; default: an untrained Iris-sized model with preprocessing fit on Iris), both
engines take raw feature rows and return class probabilities, preprocessing included: torch eager is
`qlit.load_model`'s ``predict_proba``, ONNX Runtime the exported model (`qlit.export.onnx`) and its INT8 variant,
one thread each. Reported: latency at batch 1 (median and p99 of ``--repeats`` calls, the engines interleaved
so a busy machine slows them alike), throughput at batch 1024 (rows per second), the ONNX files' sizes, and
the requests per second of the server (`qlit.export.server`, in its own process) under ``--clients``
concurrent clients, each sending one-row requests over a kept-alive connection for ``--seconds``.

    python benchmarks/onnx_serving.py                         # untrained Iris-sized model
    python benchmarks/onnx_serving.py --ckpt lightning_logs/iris/version_0/checkpoints/best.ckpt
    python benchmarks/onnx_serving.py --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_iris

from qlit.data.preprocessing import Preprocessor
from qlit.export.artifact import Predictor
from qlit.export.onnx import build_onnx, onnx_from_checkpoint, quantize_int8, session
from qlit.io.checkpoints import load_checkpoint
from qlit.models.classifier import HybridClassifier


def _models(ckpt: str | None) -> tuple[Predictor, object, np.ndarray, np.ndarray | None]:
    """The torch `Predictor`, the ONNX model, raw rows to predict, and their labels when known (Iris)."""
    iris = load_iris()
    if ckpt:
        from qlit import load_model

        predictor = load_model(ckpt)
        proto = onnx_from_checkpoint(load_checkpoint(ckpt), Path(ckpt))
    else:
        torch.manual_seed(0)
        model = HybridClassifier(4, 2, class_names=["setosa", "versicolor"]).eval()
        prep = Preprocessor().fit(iris.data[:100])
        dm_state = {"preprocessing": prep.state_dict(), "class_names": ["setosa", "versicolor"]}
        proto = build_onnx(dict(model.hparams), model.state_dict(), dm_state)
        predictor = Predictor(model, prep, ["setosa", "versicolor"], 4, quantized=False)
    width = predictor.raw_features
    if width == 4 and predictor.class_names == ["setosa", "versicolor"]:
        return predictor, proto, iris.data[:100], iris.target[:100]
    return predictor, proto, np.random.default_rng(0).normal(size=(1024, width)), None


def _latencies(engines: dict, row: np.ndarray, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(repeats):
        for name, run in engines.items():
            start = time.perf_counter()
            run(row)
            times[name].append(time.perf_counter() - start)
    return times


def _throughput(run, rows: np.ndarray, seconds: float = 2.0) -> float:
    run(rows)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(rows)
        count += len(rows)
    return count / (time.perf_counter() - start)


def _serve(model_bytes: bytes, port: int) -> None:
    from qlit.export.server import serve

    serve(session(model_bytes), "127.0.0.1", port, 1024, 1 << 20)


def _requests_per_second(model_bytes: bytes, features: list[str], row: np.ndarray, clients: int, seconds: float):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(model_bytes, port), daemon=True)
    server.start()
    for _ in range(600):
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/health")
            break
        except OSError:
            time.sleep(0.1)
    body = json.dumps({"rows": [dict(zip(features, map(float, row)))]})
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.perf_counter() < stop:
            connection.request("POST", "/predict", body, {"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            counts[i] += answer.status == 200

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    server.terminate()
    server.join(10)
    return sum(counts) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="checkpoint to export and time (default: an untrained Iris-sized model)")
    parser.add_argument("--repeats", type=int, default=2000, help="batch-1 calls per engine")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the clients send requests")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    predictor, proto, x, labels = _models(args.ckpt)
    int8 = quantize_int8(proto)
    sessions = {"onnx": session(proto), "onnx-int8": session(int8)}
    engines = {"torch": predictor.predict_proba}
    for name, sess in sessions.items():
        engines[name] = lambda rows, sess=sess: sess.run(None, {"features": np.asarray(rows, dtype=np.float32)})[0]
    batch = np.resize(x, (1024, x.shape[1]))
    rows = []
    latencies = _latencies(engines, x[:1], args.repeats)
    for name, run in engines.items():
        ms = sorted(t * 1e3 for t in latencies[name])
        row = {"engine": name, "median_ms": statistics.median(ms), "p99_ms": ms[int(0.99 * (len(ms) - 1))],
               "rows_per_s": _throughput(run, batch)}  # fmt: skip
        if labels is not None:
            row["accuracy"] = float((np.asarray(run(x)).argmax(1) == labels).mean())
        if name != "torch":
            row["bytes"] = len((proto if name == "onnx" else int8).SerializeToString())
        rows.append(row)
    features = json.loads({p.key: p.value for p in proto.metadata_props}["feature_names"])
    rps = _requests_per_second(proto.SerializeToString(), features, x[0], args.clients, args.seconds)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if args.json:
        print(json.dumps({"rows": rows, "server_requests_per_s": rps, "clients": args.clients, "load": load}))
        return
    print(f"# load average {load:.2f}, {os.cpu_count()} cores, torch and ONNX Runtime on 1 thread each")
    print(f"{'engine':<10} {'b1 median ms':>12} {'b1 p99 ms':>10} {'b1024 rows/s':>13} {'accuracy':>9} {'bytes':>7}")
    for r in rows:
        acc = f"{r['accuracy']:.4f}" if "accuracy" in r else "-"
        print(f"{r['engine']:<10} {r['median_ms']:>12.3f} {r['p99_ms']:>10.3f} {r['rows_per_s']:>13,.0f} "
              f"{acc:>9} {r.get('bytes', '-'):>7}")  # fmt: skip
    torch_row, onnx_row = rows[0], rows[1]
    print(f"ONNX Runtime vs torch eager: {torch_row['median_ms'] / onnx_row['median_ms']:.1f}x lower median latency "
          f"at batch 1, {onnx_row['rows_per_s'] / torch_row['rows_per_s']:.1f}x the throughput at batch 1024")
    print(f"qlit serve: {rps:,.0f} requests/s (one row each) under {args.clients} concurrent clients")


if __name__ == "__main__":
    sys.exit(main())
