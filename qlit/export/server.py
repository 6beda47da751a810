"""``qlit serve``: an ONNX Runtime session behind a small ASGI app on uvicorn.

``GET /health`` says the server is up and what it expects; ``POST /predict`` takes ``{"rows": [{feature: value,
...}, ...]}`` and answers ``{"predictions": [{"class": name, "probabilities": {name: p, ...}}, ...]}``. Requests
that arrive together are run as one batch (`Batcher`). A bad request gets a 4xx answer ``{"error": "<one line>"}``;
nothing a client sends stops the server. Requests run no torch: the session is the exported ONNX model.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import sys
from typing import Any

import numpy as np

BATCH_WAIT_S = 0.002  # how long the first request of a batch waits for others to join it


class BadRequest(Exception):
    """A request the server refuses: ``status`` and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Batcher:
    """Runs concurrent requests' rows through the session together, at most ``max_rows`` a batch.

    Args:
        session: An ONNX Runtime session of a qlit model.
        max_rows: Rows per batch (and per request).
        wait_s: How long a batch stays open for more requests once its first has arrived.
    """

    def __init__(self, session: Any, max_rows: int, wait_s: float = BATCH_WAIT_S) -> None:
        self.session, self.max_rows, self.wait_s = session, max_rows, wait_s
        self.input = session.get_inputs()[0].name
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0

    async def predict(self, rows: np.ndarray) -> np.ndarray:
        """Probabilities of ``rows`` (float32, at most ``max_rows``), computed in some batch."""
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((rows, future))
        return await future

    async def _run(self) -> None:
        loop, held = asyncio.get_running_loop(), None
        while True:
            batch = [held or await self.queue.get()]
            held, total = None, len(batch[0][0])
            deadline = loop.time() + self.wait_s
            while total < self.max_rows:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0))
                except TimeoutError:
                    break
                if total + len(item[0]) > self.max_rows:
                    held = item
                    break
                batch.append(item)
                total += len(item[0])
            rows = np.concatenate([item[0] for item in batch])
            try:
                probs = await loop.run_in_executor(None, lambda: self.session.run(None, {self.input: rows})[0])
            except Exception as err:  # a failed batch fails its requests, never the loop
                for _, future in batch:
                    future.set_exception(err)
                continue
            self.batches += 1
            start = 0
            for item, future in batch:
                future.set_result(probs[start : start + len(item)])
                start += len(item)


class PredictApp:
    """The ASGI app.

    Args:
        session: An ONNX Runtime session of a qlit model (metadata with ``class_names``, ``feature_names``).
        max_rows: Most rows one request may send.
        max_body_bytes: Largest request body accepted.
    """

    def __init__(self, session: Any, max_rows: int = 1024, max_body_bytes: int = 1 << 20) -> None:
        meta = session.get_modelmeta().custom_metadata_map
        self.classes = json.loads(meta["class_names"])
        self.features = json.loads(meta["feature_names"])
        self.imputes = json.loads(meta.get("imputes_missing", "false"))
        self.max_rows, self.max_body_bytes = max_rows, max_body_bytes
        self.batcher = Batcher(session, max_rows)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        try:
            status, body = 200, await self._route(scope, receive)
        except BadRequest as err:
            status, body = err.status, {"error": str(err)}
        except Exception as err:  # noqa: BLE001  one line to the client, and the server goes on
            status, body = 500, {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _route(self, scope: dict, receive: Any) -> dict[str, Any]:
        path, method = scope["path"], scope["method"]
        if path == "/health":
            if method != "GET":
                raise BadRequest(405, f"{path} takes GET, not {method}")
            return {"status": "ok", "classes": self.classes, "features": self.features, "max_rows": self.max_rows}
        if path != "/predict":
            raise BadRequest(404, f"no endpoint {path}: POST /predict or GET /health")
        if method != "POST":
            raise BadRequest(405, f"{path} takes POST, not {method}")
        rows = self.parse(await self._body(scope, receive))
        probs = await self.batcher.predict(rows)
        return {"predictions": [self._prediction(p) for p in probs.tolist()]}

    def _prediction(self, probs: list[float]) -> dict[str, Any]:
        best = max(range(len(probs)), key=probs.__getitem__)
        return {"class": self.classes[best], "probabilities": dict(zip(self.classes, probs))}

    async def _body(self, scope: dict, receive: Any) -> bytes:
        limit = self.max_body_bytes
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise BadRequest(413, f"body of {int(value)} bytes is over the limit of {limit}")
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def parse(self, body: bytes) -> np.ndarray:
        """Rows of a request body as float32 ``(n, features)``; `BadRequest` names what is wrong."""
        if not body.strip():
            raise BadRequest(400, 'empty body: send {"rows": [{feature: value, ...}, ...]}')
        try:
            content = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRequest(400, f"body is not JSON: {err}") from None
        rows = content.get("rows") if isinstance(content, dict) else None
        if not isinstance(rows, list):
            raise BadRequest(400, 'body must be a JSON object {"rows": [{feature: value, ...}, ...]}')
        if not rows:
            raise BadRequest(400, "rows is empty: send at least one row")
        if len(rows) > self.max_rows:
            raise BadRequest(413, f"{len(rows)} rows is over the limit of {self.max_rows} per request")
        out = np.empty((len(rows), len(self.features)), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i] = self._row(i, row)
        return out

    def _row(self, i: int, row: Any) -> list[float]:
        if not isinstance(row, dict):
            raise BadRequest(400, f"row {i} is a {type(row).__name__}, not an object of feature: value")
        unknown = [name for name in row if name not in self.features]
        if unknown:
            known = ", ".join(self.features)
            raise BadRequest(400, f"row {i}: unknown feature {unknown[0]!r}; the model takes {known}")
        values = []
        for name in self.features:
            if name not in row:
                raise BadRequest(400, f"row {i}: feature {name!r} is missing")
            value = row[name]
            if value is None and self.imputes:
                values.append(math.nan)  # imputed by the model, as in training
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadRequest(400, f"row {i}: feature {name!r} is {json.dumps(value)[:40]}, not a number")
            if not math.isfinite(value) or abs(value) > 3.4e38:
                raise BadRequest(400, f"row {i}: feature {name!r} is {value}, not a finite number")
            values.append(float(value))
        return values


def serve(session: Any, host: str, port: int, max_rows: int, max_body_bytes: int) -> None:
    """Serve ``session`` until interrupted (SIGINT or SIGTERM)."""
    try:
        import uvicorn
    except ImportError:
        from qlit.errors import QlitError

        raise QlitError("qlit serve needs uvicorn: pip install 'qlit[serve]'") from None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            from qlit.errors import QlitError

            raise QlitError(f"qlit serve cannot listen on {host}:{port}: {err.strerror or err}") from None
    app = PredictApp(session, max_rows, max_body_bytes)
    print(f"qlit serve: http://{host}:{port} (POST /predict, GET /health), classes {app.classes}", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
