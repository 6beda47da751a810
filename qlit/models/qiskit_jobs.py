"""Hardware jobs that lose nothing: bounded jobs in flight, a time-out per job, retries with back-off, and a
record of every job in the run folder so a killed run resumes without paying again for finished jobs.

The scheduler knows nothing of Qiskit: it sends `Chunk`s of rows through a ``submit`` function that returns a
job (anything with ``job_id()``, ``done()``, ``result()`` and, if it can, ``cancel()``) and turns the finished job
into one array row per input row with ``collect``. Every row gets a result or the command fails naming the job.

A job that was still running when its command was killed is taken up by its id on the next run (``retrieve``: a
real device's service keeps its jobs), so it is neither paid for twice nor lost; where the job cannot be found
again (a fake device's jobs live in the killed process) its chunk is sent again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qlit.errors import QlitError

RECORD = "jobs.json"


@dataclass(frozen=True, eq=False)
class Chunk:
    """Rows ``start`` to ``start + len(values)`` of a run, sent as one job; ``key`` names its result on disk."""

    start: int
    values: np.ndarray
    key: str


def chunk_key(fingerprint: str, values: np.ndarray) -> str:
    """A name for a chunk's result that changes with the circuit, device, shots, seed and every value sent."""
    digest = hashlib.sha256(fingerprint.encode())
    digest.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
    return digest.hexdigest()[:24]


class JobRecord:
    """Job ids and finished results in ``folder``: ``jobs.json`` (ids, tries, status) and one ``<key>.npz`` per chunk.

    Plain data (JSON and ``.npz`` read with ``allow_pickle=False``): a run folder never holds pickles. ``folder=None``
    keeps nothing on disk.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.jobs: dict[str, dict[str, Any]] = {}
        if folder is not None and (folder / RECORD).is_file():
            try:
                self.jobs = json.loads((folder / RECORD).read_text())
            except (OSError, ValueError) as err:
                raise QlitError(f"{folder / RECORD} is not a readable job record: {err}") from err

    def unfinished(self, key: str) -> tuple[str, int] | None:
        """``(job id, tries)`` of chunk ``key``'s job when a run stopped while it was running, else None."""
        entry = self.jobs.get(key)
        if entry is None or entry.get("status") != "submitted" or not entry.get("job_ids"):
            return None
        return str(entry["job_ids"][-1]), int(entry.get("tries", 1))

    def result(self, key: str, rows: int) -> np.ndarray | None:
        """The finished result of chunk ``key``, or None when there is none (or not one row per input row)."""
        if self.folder is None or not (self.folder / f"{key}.npz").is_file():
            return None
        with np.load(self.folder / f"{key}.npz", allow_pickle=False) as saved:
            values = saved["values"]
        return values if len(values) == rows else None

    def note(self, key: str, **fields: Any) -> None:
        """Update chunk ``key``'s entry (job ids, tries, status) and write the record at once."""
        entry = self.jobs.setdefault(key, {"job_ids": [], "tries": 0, "status": "pending"})
        job_id = fields.pop("job_id", None)
        if job_id is not None:
            entry["job_ids"].append(job_id)
        entry.update(fields)
        self._write(RECORD, json.dumps(self.jobs, indent=1).encode())

    def keep(self, key: str, values: np.ndarray, job_id: str) -> None:
        """Write chunk ``key``'s result, then mark it done."""
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f"{key}.tmp.npz"
            np.savez(tmp, values=values)
            os.replace(tmp, self.folder / f"{key}.npz")
        self.note(key, status="done", finished_by=job_id)

    def _write(self, name: str, data: bytes) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.folder / name)


@dataclass
class Usage:
    """What the hardware was asked for: circuits (rows), jobs and shots paid for, device seconds if reported."""

    circuits: int = 0
    jobs: int = 0
    shots: int = 0
    reused_chunks: int = 0
    taken_up: int = 0
    retries: int = 0
    device_seconds: float | None = None
    job_ids: list[str] = field(default_factory=list)

    def add_device_time(self, seconds: float | None) -> None:
        if seconds is not None:
            self.device_seconds = (self.device_seconds or 0.0) + seconds


@dataclass
class _Running:
    chunk: Chunk
    job: Any
    job_id: str
    tries: int
    deadline: float


class JobScheduler:
    """Run chunks as jobs: at most ``max_in_flight`` at once, each given ``timeout_s`` and ``retries`` more tries.

    Args:
        submit: ``submit(chunk, attempt) -> job``.
        collect: ``collect(job) -> array`` with one row per row of the chunk.
        record: Where job ids and results are kept (a killed run resumes from it).
        shots: Shots per row, for the usage count.
        device_time: ``device_time(job) -> seconds or None``, as the backend reports it.
        retrieve: ``retrieve(job_id) -> job or None``: a job an earlier run submitted and did not see finish, found
            again by its id (None: not found, the chunk is sent again).
        poll_s: The longest wait between two looks at the running jobs; the waits start at a millisecond and double
            while nothing changes (a real device's service should not be asked every few milliseconds).
    """

    def __init__(
        self,
        submit: Callable[[Chunk, int], Any],
        collect: Callable[[Any], np.ndarray],
        record: JobRecord,
        shots: int,
        max_in_flight: int = 2,
        timeout_s: float = 600.0,
        retries: int = 3,
        backoff_s: float = 2.0,
        poll_s: float = 0.05,
        device_time: Callable[[Any], float | None] | None = None,
        retrieve: Callable[[str], Any] | None = None,
    ) -> None:
        self.submit, self.collect, self.record, self.shots = submit, collect, record, shots
        self.max_in_flight, self.timeout_s, self.retries = max_in_flight, timeout_s, retries
        self.backoff_s, self.poll_s = backoff_s, poll_s
        self.device_time = device_time or (lambda job: None)
        self.retrieve = retrieve or (lambda job_id: None)
        self.usage = Usage()

    def run(self, chunks: Sequence[Chunk]) -> list[np.ndarray]:
        """One result array per chunk, in order; raises a one-line `QlitError` naming a job that failed for good."""
        results: dict[int, np.ndarray] = {}
        waiting: list[tuple[Chunk, int, float]] = []  # chunk, tries so far, not before (monotonic)
        running: list[_Running] = []
        for i, chunk in enumerate(chunks):
            done = self.record.result(chunk.key, len(chunk.values))
            if done is not None:
                results[i] = done
                self.usage.reused_chunks += 1
            elif (taken := self._take_up(chunk)) is not None:
                running.append(taken)
            else:
                waiting.append((chunk, 0, 0.0))
        order = {chunk.key: i for i, chunk in enumerate(chunks)}
        pause = 0.001
        while waiting or running:
            now = time.monotonic()
            for entry in [w for w in waiting if w[2] <= now]:
                if len(running) >= self.max_in_flight:
                    break
                waiting[:] = [w for w in waiting if w is not entry]
                started = self._start(entry[0], entry[1], waiting)
                if started is not None:
                    running.append(started)
            for item in list(running):
                outcome = self._check(item)
                if outcome is None:
                    continue
                running.remove(item)
                pause = 0.001
                if isinstance(outcome, np.ndarray):
                    results[order[item.chunk.key]] = outcome
                else:
                    self._retry(item.chunk, item.tries, item.job_id, outcome, waiting)
            if waiting or running:
                time.sleep(pause)
                pause = min(2 * pause, self.poll_s)
        return [results[i] for i in range(len(chunks))]

    def _take_up(self, chunk: Chunk) -> _Running | None:
        """The job an earlier run left running for ``chunk``, found again by its id, or None."""
        unfinished = self.record.unfinished(chunk.key)
        if unfinished is None:
            return None
        job_id, tries = unfinished
        try:
            job = self.retrieve(job_id)
        except Exception:  # noqa: BLE001  (a job the service cannot find again is sent again)
            job = None
        if job is None:
            return None
        self.usage.taken_up += 1
        self.usage.job_ids.append(job_id)
        return _Running(chunk, job, job_id, tries, time.monotonic() + self.timeout_s)

    def _start(self, chunk: Chunk, tries: int, waiting: list) -> _Running | None:
        try:
            job = self.submit(chunk, tries)
            job_id = str(job.job_id())
        except Exception as err:  # a refused submission is retried like a failed job
            self._retry(chunk, tries + 1, "(not submitted)", _reason(err), waiting)
            return None
        self.usage.jobs += 1
        self.usage.circuits += len(chunk.values)
        self.usage.shots += len(chunk.values) * self.shots
        self.usage.job_ids.append(job_id)
        self.record.note(chunk.key, job_id=job_id, tries=tries + 1, status="submitted", rows=len(chunk.values),
                         start=chunk.start)  # fmt: skip
        return _Running(chunk, job, job_id, tries + 1, time.monotonic() + self.timeout_s)

    def _check(self, item: _Running) -> np.ndarray | str | None:
        """The job's rows when it finished, the reason when it failed or timed out, None while it runs."""
        try:
            if not item.job.done():
                if time.monotonic() < item.deadline:
                    return None
                try:
                    item.job.cancel()
                except Exception:  # noqa: BLE001  (a job that cannot be cancelled is abandoned all the same)
                    pass
                return f"no result within {self.timeout_s:g} s"
            values = np.asarray(self.collect(item.job), dtype=np.float64)
        except Exception as err:
            return _reason(err)
        if len(values) != len(item.chunk.values):
            return f"{len(values)} results for {len(item.chunk.values)} rows"
        self.usage.add_device_time(self.device_time(item.job))
        self.record.keep(item.chunk.key, values, item.job_id)
        return values

    def _retry(self, chunk: Chunk, tries: int, job_id: str, reason: str, waiting: list) -> None:
        self.record.note(chunk.key, status="failed", reason=reason)
        last = chunk.start + len(chunk.values) - 1
        if tries > self.retries:
            raise QlitError(
                f"hardware job {job_id} (rows {chunk.start}-{last}) failed after {tries} tries: {reason}; "
                "finished jobs are kept in the run folder, run the command again to resume"
            )
        self.usage.retries += 1
        waiting.append((chunk, tries, time.monotonic() + self.backoff_s * 2 ** (tries - 1)))


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
