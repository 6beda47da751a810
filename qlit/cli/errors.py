"""The error a user sees: the `QlitError` behind an exception from Lightning, jsonargparse, torch or the OS."""

from __future__ import annotations

import errno

from lightning.fabric.utilities.exceptions import MisconfigurationException

from qlit.errors import QlitError
from qlit.runtime import DDP_TIMEOUT_ENV, ddp_timeout

_PEER_LOST = (  # gloo's words; the last: a rank that did not reach the rendezvous in time
    "Timed out waiting", "Connection closed by peer", "Connection reset by peer", "socket has timed out",
)


def user_error(err: BaseException | None) -> QlitError | None:
    """The `QlitError` behind ``err``: jsonargparse wraps errors raised while instantiating classes."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, QlitError):
            return err
        if isinstance(err, MisconfigurationException):  # Lightning's word for a bad trainer setting
            return QlitError(str(err).strip().splitlines()[0])
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            where = f" writing {err.filename}" if err.filename else ""
            return QlitError(
                f"no space left on the device{where}: the command stopped; checkpoints already on disk are "
                "complete (resume with --ckpt_path last once there is room)"
            )
        if isinstance(err, OSError) and err.filename is not None and err.strerror:
            return QlitError(f"{err.filename}: {err.strerror}")
        if isinstance(err, RuntimeError) and any(sign in str(err) for sign in _PEER_LOST):
            return QlitError(
                "a DDP process stopped answering (it died, or did not start or answer within "
                f"{DDP_TIMEOUT_ENV}={ddp_timeout().total_seconds():g} s); the job was stopped: "
                f"{str(err).splitlines()[0][:200]}"
            )
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
