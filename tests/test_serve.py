"""``qlit serve``: a real server on 127.0.0.1 answers like ``qlit predict``, refuses bad requests and keeps serving."""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_iris

from qlit.cli import main
from qlit.export.server import Batcher
from tests.conftest import QUICK, one_line_error

pytest.importorskip("onnxruntime")
pytest.importorskip("uvicorn")

IRIS = str(Path(__file__).resolve().parents[1] / "configs" / "iris.yaml")
FEATURES = ["x0", "x1", "x2", "x3"]
MAX_ROWS, MAX_BODY = 50, 20_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, body: bytes | None = None, method: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A 1-epoch Iris fit, ``qlit serve`` of its best checkpoint in a subprocess, and ``qlit predict`` on raw rows."""
    root = tmp_path_factory.mktemp("serve")
    args = ["--config", IRIS, f"--trainer.logger.init_args.save_dir={root}", *QUICK]
    x = load_iris().data[40:60]  # both classes
    new = root / "new.csv"
    with new.open("w", newline="") as handle:
        rows = ([f"s{i}", *(repr(float(v)) for v in row)] for i, row in enumerate(x))
        csv.writer(handle).writerows([["id", *FEATURES], *rows])
    port = _free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        main(["fit", *args, "--trainer.max_epochs=1"])
        command = [sys.executable, "-m", "qlit", "serve", *args, "--ckpt_path", "best", "--port", str(port),
                   "--max_rows", str(MAX_ROWS), "--max_body_bytes", str(MAX_BODY)]  # fmt: skip
        process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        main(["predict", *args, "--ckpt_path", "best", "--data.predict_file", str(new)])  # while the server starts
    with (root / "iris" / "version_0" / "predictions.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if _request(f"{url}/health")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"qlit serve did not start: {process.communicate()[1][-2000:]}")
        time.sleep(0.2)
    expected = {"labels": [r[1] for r in rows], "probs": np.array([[float(v) for v in r[2:]] for r in rows])}
    yield {"url": url, "process": process, "x": x, "args": args, **expected}
    if process.poll() is None:
        process.kill()
        process.communicate()


def _rows(x: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, map(float, row))) for row in x]


def _predict(url: str, payload: object) -> tuple[int, dict]:
    return _request(f"{url}/predict", json.dumps(payload).encode())


def test_health_names_classes_and_features(server):
    status, body = _request(f"{server['url']}/health")
    assert status == 200
    assert body["status"] == "ok" and body["classes"] == ["setosa", "versicolor"] and body["features"] == FEATURES


def test_predictions_agree_with_qlit_predict(server):
    status, body = _predict(server["url"], {"rows": _rows(server["x"])})
    assert status == 200
    probs = np.array([[p["probabilities"][c] for c in ("setosa", "versicolor")] for p in body["predictions"]])
    np.testing.assert_allclose(probs, server["probs"], atol=1e-5)  # predictions.csv holds 6 decimals
    assert [p["class"] for p in body["predictions"]] == server["labels"]


BAD = [
    (b"", 400, "empty body"),
    (b"{not json", 400, "not JSON"),
    (b'{"samples": []}', 400, '"rows"'),
    (b'{"rows": []}', 400, "rows is empty"),
    (json.dumps({"rows": [{"x0": 5.0, "x1": 3.0, "x2": 1.0}]}).encode(), 400, "'x3' is missing"),
    (json.dumps({"rows": [{"x0": "5.0", "x1": 3.0, "x2": 1.0, "x3": 0.2}]}).encode(), 400, "not a number"),
    (json.dumps({"rows": [{"x0": True, "x1": 3.0, "x2": 1.0, "x3": 0.2}]}).encode(), 400, "not a number"),
    (b'{"rows": [{"x0": NaN, "x1": 3.0, "x2": 1.0, "x3": 0.2}]}', 400, "not a finite number"),
    (json.dumps({"rows": [{"x0": 1, "x1": 3, "x2": 1, "x3": 0, "petal": 1}]}).encode(), 400, "unknown feature"),
    (json.dumps({"rows": [dict.fromkeys(FEATURES, 1.0)] * (MAX_ROWS + 1)}).encode(), 413, f"limit of {MAX_ROWS}"),
    (b" " * (MAX_BODY + 1), 413, "over the limit"),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD, ids=[words for _, _, words in BAD])
def test_bad_requests_get_a_4xx_one_line_reason_and_the_server_goes_on(server, body, status, words):
    got, answer = _request(f"{server['url']}/predict", body, method="POST")
    assert got == status and words in answer["error"] and "\n" not in answer["error"]
    assert _request(f"{server['url']}/health")[0] == 200
    assert server["process"].poll() is None


def test_wrong_method_and_path_are_4xx(server):
    assert _request(f"{server['url']}/predict")[0] == 405
    assert _request(f"{server['url']}/nowhere")[0] == 404


def test_eight_concurrent_clients_each_get_their_own_rows(server):
    x = server["x"]

    def one(i: int) -> tuple[int, dict]:
        return _predict(server["url"], {"rows": _rows(x[i : i + 2 + i % 3])})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    for i, (status, body) in enumerate(answers):
        assert status == 200
        probs = np.array([p["probabilities"]["versicolor"] for p in body["predictions"]])
        np.testing.assert_allclose(probs, server["probs"][i : i + 2 + i % 3, 1], atol=1e-5)


def test_a_port_in_use_or_no_checkpoint_is_a_one_line_error(server, capfd):
    args = ["serve", *server["args"], "--ckpt_path", "best", "--port", server["url"].rsplit(":", 1)[1]]
    one_line_error(args, capfd, ["cannot listen on 127.0.0.1", "in use"])
    one_line_error(["serve", *server["args"]], capfd, ["needs a checkpoint", "--ckpt_path"])
    one_line_error(["export", *server["args"]], capfd, ["needs a checkpoint"])
    assert server["process"].poll() is None


def test_sigterm_stops_the_server_cleanly(server):
    process = server["process"]
    process.terminate()
    _, stderr = process.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: the exit status says SIGTERM ended it.
    assert process.returncode in (0, -signal.SIGTERM), stderr[-2000:]
    assert "Traceback" not in stderr


class _Session:
    """A stand-in ONNX Runtime session that records the batches it runs."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def get_inputs(self) -> list:
        return [type("Input", (), {"name": "features"})()]

    def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        rows = feeds["features"]
        self.batches.append(len(rows))
        return [rows[:, :1] * 2]


def test_batcher_groups_concurrent_requests_up_to_max_rows():
    session = _Session()
    batcher = Batcher(session, max_rows=10, wait_s=0.05)

    async def requests() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.predict(np.full((3, 2), i, dtype=np.float32)) for i in range(8)))

    answers = asyncio.run(requests())
    assert [float(a[0, 0]) for a in answers] == [2.0 * i for i in range(8)]  # each request gets its own rows back
    assert session.batches == [9, 9, 6]  # 3 rows a request, at most 10 a batch
