"""``qlit`` commands as real processes that skip the imports: forked from one interpreter that has done them.

Each fresh ``python -m qlit`` spends about 9 CPU-seconds importing torch, Lightning, torchmetrics and scikit-learn
before it reads its first option, and the suite runs a dozen such commands. A `QlitProcesses` server is one fresh
interpreter that imports ``qlit.cli`` and then waits: every command it is given runs in a process forked from it,
with its own working folder, environment, ``sys.argv`` and standard streams (files, not a terminal), through
``qlit.__main__.run`` as ``python -m qlit`` does, and it ends through the interpreter's normal shutdown (exit
handlers, what they print) or by a signal. What such a process cannot show is the import phase itself, so the
tests of Ctrl-C during the imports, of a config-file error found before them, of what is imported, of DDP (whose
ranks re-run ``python -m``), of Ray and of ``setpriv`` still start their own interpreters. The server checks
that its imports print nothing: a user's fresh process would show that on stderr.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

# Variables of the test run that a user's shell does not have.
TEST_ONLY_VARIABLES = ("QLIT_DEBUG", "PL_GLOBAL_SEED", "QLIT_RUN_VERSION", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_WORKER")

SERVER = r"""
import json, os, sys

import qlit.__main__ as entry
import qlit.cli  # noqa: F401  the imports of every command, paid once here

print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if "wait" in request:
        _, status = os.waitpid(request["wait"], 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
        continue
    job = request["start"]
    pid = os.fork()
    if pid:
        print(json.dumps({"pid": pid}), flush=True)
        continue
    try:
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(job["env"])
        # as `python -m` would have it: the working folder first, then PYTHONPATH
        paths = [p for p in job["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:1] = [job["cwd"], *paths]
        for fd, name in ((0, os.devnull), (1, job["stdout"]), (2, job["stderr"])):
            opened = os.open(name, os.O_RDONLY if fd == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        sys.argv = ["qlit", *job["args"]]
    except BaseException as err:
        os.write(2, f"fork server: {err!r}\n".encode())
        os._exit(70)
    entry.run()
    sys.exit(0)
"""


class QlitProcesses:
    """A fork server for ``qlit`` commands; see the module docstring."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0
        self._outputs: dict[int, tuple[list[str], Path]] = {}
        self.server_stderr = folder / "server.stderr"
        with self.server_stderr.open("w") as err:
            self.server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=err, env=user_environment(), text=True)
        assert self._reply(300) == "ready", self.server_stderr.read_text()[-3000:]
        imports_said = self.server_stderr.read_text()
        assert imports_said == "", f"importing qlit's CLI printed: {imports_said[-2000:]}"

    def _reply(self, timeout: float) -> str:
        ready, _, _ = select.select([self.server.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the fork server did not answer in {timeout} s")
        return self.server.stdout.readline().strip()

    def _ask(self, request: dict, timeout: float = 60) -> dict:
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        answer = self._reply(timeout)
        assert answer, f"the fork server died: {self.server_stderr.read_text()[-3000:]}"
        return json.loads(answer)

    def start(self, args: list[str], cwd: Path | str | None = None, env: dict[str, str] | None = None) -> int:
        """Start ``qlit <args>`` in ``cwd`` (default: the current folder) with ``env`` added to a user's
        environment; returns its process id, for `wait`."""
        self.count += 1
        out = self.folder / f"{self.count}.stdout"
        job = {"args": list(args), "cwd": str(Path(cwd or os.getcwd()).resolve()),
               "env": {**user_environment(), **(env or {})}, "stdout": str(out), "stderr": str(out.with_suffix(".stderr"))}
        pid = self._ask({"start": job})["pid"]
        self._outputs[pid] = (job["args"], out)
        return pid

    def wait(self, pid: int, timeout: float = 300) -> subprocess.CompletedProcess:
        """Wait for the command ``pid``; a command still running after ``timeout`` seconds is killed and fails.

        Returns:
            Its arguments, exit status (minus the signal number if a signal ended it), stdout and stderr.
        """
        deadline = time.monotonic() + timeout
        self.server.stdin.write(json.dumps({"wait": pid}) + "\n")
        self.server.stdin.flush()
        try:
            answer = self._reply(max(deadline - time.monotonic(), 0.1))
            timed_out = False
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            answer, timed_out = self._reply(60), True
        args, out = self._outputs.pop(pid)
        done = subprocess.CompletedProcess(args, json.loads(answer)["code"], out.read_text(),
                                           out.with_suffix(".stderr").read_text())
        assert not timed_out, f"qlit did not finish in {timeout} s: {done.stderr[-3000:]}"
        return done

    def run(self, args: list[str], cwd: Path | str | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        """``qlit <args>`` to its end, like ``subprocess.run``."""
        return self.wait(self.start(args, cwd, env), timeout)

    def close(self) -> None:
        self.server.stdin.close()
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()


def user_environment() -> dict[str, str]:
    """This process's environment less what only the test run sets."""
    return {k: v for k, v in os.environ.items() if k not in TEST_ONLY_VARIABLES}
