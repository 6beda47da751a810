"""``python -m qlit`` and the ``qlit`` command, with a clean exit on Ctrl-C while qlit is starting."""

import os
import signal
import sys


def run() -> None:
    """Import the CLI and run it; Ctrl-C during the imports exits with status 130 and one line."""
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    def exit_interrupted():
        print("qlit: interrupted (Ctrl-C) while starting", file=sys.stderr, flush=True)
        # Not sys.exit: an interrupt that landed in code an extension ran during its import leaves
        # CPython marked as interrupted, and its shutdown would then kill the process with SIGINT
        # (status -2) instead of exiting with 130. Nothing has been written yet, so nothing is lost.
        os._exit(130)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        # A broken or missing config file is told in one line before torch and Lightning are imported (seconds).
        from qlit.errors import QlitError
        from qlit.io.config_files import check_config_files

        try:
            check_config_files(sys.argv[1:])
        except QlitError as err:
            print(f"qlit: error: {err}", file=sys.stderr)
            sys.exit(2)
        from qlit.cli import main
    except BaseException:
        # Interrupted inside an extension module's import, Python can report a half-imported module
        # (numpy: "module 'numpy._core' has no attribute '_multiarray_umath'") instead of the Ctrl-C.
        if interrupted:
            exit_interrupted()
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        # Some imported package caught the KeyboardInterrupt (a bare ``except:`` around an optional import,
        # or a finaliser that only prints "Exception ignored"), so the imports went on; the Ctrl-C still holds.
        exit_interrupted()
    main()


if __name__ == "__main__":
    run()
