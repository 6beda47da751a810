"""The one exception type qlit shows to users as a one-line message instead of a traceback."""


class QlitError(ValueError):
    """Bad input from the user: a config value, a data file or a checkpoint.

    The CLI prints ``qlit: error: <message>`` and exits with status 2. The message must name the
    offending value or file.
    """
