"""Reading users' tables (CSV, TSV, Parquet) with pandas, and turning their columns into checked arrays.

`read_table` is the one place qlit reads a table; every failure is a one-line `QlitError` naming the
file and, where there is one, the line (text files) or row (Parquet) and the column at fault. A few
tables that ship inside qlit's dependencies can be named instead of a path: ``sklearn:breast_cancer``,
``sklearn:wine`` and ``sklearn:iris`` (scikit-learn), ``arch:sp500`` and ``arch:nasdaq`` (daily index
bars bundled with the ``arch`` package).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import functools
import gzip
import importlib.util
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qlit.data.shared import remembered
from qlit.errors import QlitError
from qlit.io.files import check_regular_file

if TYPE_CHECKING:  # pandas is imported where a table is read: commands that read none do not pay for it
    import pandas as pd

TEXT_SUFFIXES = {".csv": ",", ".tsv": "\t", ".csv.gz": ",", ".tsv.gz": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
SKLEARN_TABLES = ("breast_cancer", "wine", "iris")
ARCH_TABLES = ("sp500", "nasdaq")
BUILTIN = tuple(f"sklearn:{name}" for name in SKLEARN_TABLES) + tuple(f"arch:{name}" for name in ARCH_TABLES)


@dataclass(frozen=True)
class Table:
    """A table as read: its columns (names stripped, file order) and where each row came from.

    Attributes:
        frame: The data, one row per data row of the file, index ``0..n-1``.
        source: The file (or built-in table name) used in messages.
        text: Whether rows are numbered by file line (CSV/TSV: the header is line 1) rather than
            by row (Parquet, built-in tables: the first data row is row 1).
        lines: The file line of each row, where blank lines were skipped (``text_cells`` tables);
            ``None`` when row ``i`` is line ``i + 2``.
    """

    frame: pd.DataFrame
    source: str
    text: bool
    lines: np.ndarray | None = field(default=None, compare=False)

    def where(self, row: int) -> str:
        """``"line 7"`` or ``"row 6"`` for the data row with index ``row``."""
        if self.lines is not None:
            return f"line {int(self.lines[row])}"
        return f"line {row + 2}" if self.text else f"row {row + 1}"

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]

    def require(self, name: str, role: str) -> None:
        """Raise unless column ``name`` exists; ``role`` says what it was asked for (e.g. ``"target"``).

        The message lists the closest names first (ignoring case, then by similarity), so a column that
        differs only in case or a letter is never hidden among the rest.
        """
        if name not in self.frame.columns:
            close = closest(name, self.columns)
            hint = f"did you mean {close[0]!r}? The columns are" if close else "the columns are"
            listed = close + [c for c in self.columns if c not in close]  # the likeliest first: never cut off
            more = f", … ({len(listed)} in all)" if len(listed) > 12 else ""
            shown = ", ".join(repr(c) for c in listed[:12]) + more
            raise QlitError(f"{self.source}: no column {name!r} ({role}); {hint} {shown}")

    def numbers(self, name: str, missing: str = "error", hint: str = "") -> np.ndarray:
        """Column ``name`` as float64; NaN marks a missing value when ``missing="keep"``.

        Raises:
            QlitError: a value is not a number or not finite, or (``missing="error"``) is missing;
                ``hint`` is appended to the missing-value message.
        """
        import pandas as pd

        column = self.frame[name]
        if pd.api.types.is_bool_dtype(column):
            column = column.astype("float64")
        if pd.api.types.is_numeric_dtype(column):
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            coerced = pd.to_numeric(column, errors="coerce")
            bad = column.notna().to_numpy() & coerced.isna().to_numpy()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                value = column.iloc[row]
                raise QlitError(f"{self.source}: {self.where(row)}, column {name!r}: {value!r} is not a number")
            values = coerced.to_numpy(dtype=np.float64, na_value=np.nan)
        infinite = np.isinf(values)
        if infinite.any():
            row = int(np.flatnonzero(infinite)[0])
            raise QlitError(f"{self.source}: {self.where(row)}, column {name!r}: {values[row]} is not a finite number")
        if missing == "error" and np.isnan(values).any():
            row = int(np.flatnonzero(np.isnan(values))[0])
            raise QlitError(f"{self.source}: {self.where(row)}, column {name!r}: missing value{hint}")
        return values

    def is_numeric(self, name: str) -> bool:
        """Whether column ``name`` holds numbers (a text column with some numbers in it raises instead).

        A column of text that also holds numbers is most likely a numeric column with a typo; it is
        reported rather than silently left out of the features.
        """
        import pandas as pd

        column = self.frame[name]
        if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
            return True
        if not (pd.api.types.is_string_dtype(column) or column.dtype == object):
            return False  # dates, categories, …
        coerced = pd.to_numeric(column, errors="coerce")
        if coerced.notna().any():
            self.numbers(name, missing="keep")  # raises, naming the first value that is not a number
        return False


def closest(name: str, names: list[str], limit: int = 3) -> list[str]:
    """The names most like ``name``, best first: a match ignoring case, then difflib's close matches."""
    lowered: dict[str, list[str]] = {}
    for candidate in names:
        lowered.setdefault(candidate.lower(), []).append(candidate)
    found = list(lowered.get(name.lower(), []))
    for match in difflib.get_close_matches(name.lower(), list(lowered), n=limit, cutoff=0.6):
        found += [c for c in lowered[match] if c not in found]
    return found[:limit]


def binary_kind(start: bytes) -> str | None:
    """What an obvious binary file is from its first bytes (``"a Parquet file"``, …), or ``None``."""
    if start.startswith(b"PAR1"):
        return "a Parquet file"
    if start.startswith(b"\x1f\x8b"):
        return "gzip-compressed"
    if start.startswith(b"PK\x03\x04"):
        return "a ZIP archive (an Excel .xlsx workbook?)"
    if start.startswith(b"\xd0\xcf\x11\xe0"):
        return "an old Excel .xls workbook"
    return None


def _refuse_binary(path: Path, what: str, start: bytes) -> None:
    """Raise for a text table that is really Parquet, gzip, an Excel workbook: say what to name or do."""
    kind = binary_kind(start)
    if kind is None:
        return
    fix = {
        "a Parquet file": "name it .parquet",
        "gzip-compressed": f"name it {path.name}.gz, or decompress it (gunzip)",
    }.get(kind, "export it as CSV")
    raise QlitError(f"{what} {path} is {kind}, not a text table; {fix}")


def read_table(path: str | Path, what: str = "data file", *, text_cells: bool = False) -> Table:
    """Read a CSV, TSV or Parquet file (or a built-in table) with pandas.

    Text files may be gzip-compressed (``.csv.gz``) and may start with a UTF-8 or UTF-16 byte-order
    mark, as spreadsheet programs write them. Column names are stripped of surrounding blanks; they
    must be present and unique.

    With ``text_cells`` the file is one of qlit's plain CSV inputs (genotype tables, predict files,
    sample sheets): uncompressed UTF-8 (a byte-order mark allowed), comma-separated (``.tsv``:
    tab-separated; any other name without a comma in its header: separated by runs of blanks).
    Every cell is kept as its text, stripped of surrounding blanks, with no type guessing and no
    missing-value codes; blank lines are skipped but still counted in the line numbers of messages;
    a row with more or fewer cells than the header is an error; and a header without data rows gives
    an empty table (an empty file: no columns either) for the caller to judge.

    Args:
        path: ``.csv``, ``.tsv``, ``.csv.gz``, ``.tsv.gz``, ``.parquet``, or a name from `BUILTIN`.
        what: What the file is, for messages (``"data file"``, ``"predict file"``).
        text_cells: Read a plain CSV as text cells (see above).

    Returns:
        The `Table`.

    Raises:
        QlitError: the file is missing, of an unknown kind, unreadable, empty, or its header is bad; a
            Parquet, gzip or Excel file under a text name is named for what it is.
    """
    name = str(path)
    source = name if name in BUILTIN and not text_cells else str(Path(path).resolve())
    read = functools.partial(_read_table, path, what, text_cells)
    return remembered(("table", source, text_cells, _stamp(path)), read)  # one read per file and command


def _stamp(path: str | Path) -> tuple[int, int] | None:
    """Size and modification time of a file (``None`` for a built-in table or a missing file)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _read_table(path: str | Path, what: str, text_cells: bool) -> Table:
    if text_cells:
        return _read_text_cells(Path(path), what)
    name = str(path)
    if name in BUILTIN:
        return _builtin(name)
    path = Path(path)
    lower = path.name.lower()
    suffix = next((s for s in (*TEXT_SUFFIXES, *PARQUET_SUFFIXES) if lower.endswith(s)), None)
    if ":" in name and not path.exists() and not path.parent.exists():
        raise QlitError(f"{what} not found: {path} (built-in tables are {', '.join(BUILTIN)})")
    check_regular_file(path, what, "a regular file: give a .csv, .tsv or .parquet file")
    if suffix is None:
        raise QlitError(f"{path}: unknown kind of table; use a .csv, .tsv or .parquet file")
    if suffix in PARQUET_SUFFIXES:
        frame = _read_parquet(path)
        text = False
    else:
        frame = _read_text(path, TEXT_SUFFIXES[suffix], what)
        text = True
    if len(frame) == 0:
        raise QlitError(f"{path}: no data rows (expected a header row and at least one data row)")
    return Table(frame.reset_index(drop=True), str(path), text)


def _encoding(path: Path, what: str = "data file") -> str:
    """The text encoding of a table, after refusing a binary file (Parquet, gzip, Excel) under a text name."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            start = handle.read(4)
    except OSError as err:
        raise QlitError(f"{path}: cannot be read ({err})") from None
    _refuse_binary(path, what, start)  # of a .gz, the decompressed start
    if start[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    return "utf-8-sig"  # also reads plain UTF-8; strips the mark that would hide the first column's name


def _read_text(path: Path, sep: str, what: str = "data file") -> pd.DataFrame:
    import pandas as pd

    encoding = _encoding(path, what)
    options = {"sep": sep, "encoding": encoding, "skipinitialspace": True, "low_memory": False}
    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, **options)
        frame = pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        raise QlitError(f"{path}: empty file (expected a header row and at least one data row)") from None
    except pd.errors.ParserError as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if found:
            expected, line, saw = found.groups()
            raise QlitError(f"{path}: line {line} has {saw} fields, the header has {expected}") from None
        raise QlitError(f"{path}: not a readable table ({str(err).strip().splitlines()[0]})") from None
    except UnicodeDecodeError as err:
        raise QlitError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except (OSError, EOFError) as err:
        raise QlitError(f"{path}: cannot be read ({err})") from None
    names = [str(v).strip() for v in header.iloc[0].tolist()]
    _check_names(path, names)
    frame.columns = names
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise QlitError(f"{path}: reading Parquet files needs pyarrow: pip install 'qlit[parquet]'") from None
    import pyarrow.lib

    try:
        frame = pd.read_parquet(path)
    except (pyarrow.lib.ArrowException, OSError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise QlitError(f"{path}: not a readable Parquet file ({message})") from None
    names = [str(c).strip() for c in frame.columns]
    _check_names(path, names)
    frame.columns = names
    return frame


def _check_names(path: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        if not name or name.lower() == "nan":
            raise QlitError(f"{path}: column {i + 1} has no name in the header")
    for j, name in enumerate(names):
        if name in names[:j]:
            raise QlitError(
                f"{path}: column {name!r} appears twice in the header (columns {names.index(name) + 1} and {j + 1}); "
                "every column needs its own name"
            )


def _whitespace_separated(path: Path, text: str) -> bool:
    """Whether a text table splits on runs of blanks: named neither .csv nor .tsv, no comma in its header."""
    if path.name.lower().endswith((".csv", ".tsv")):
        return False
    first = next((line for line in text.splitlines() if line.strip()), "")
    return "," not in first


def _read_text_cells(path: Path, what: str) -> Table:
    """`read_table` with ``text_cells``: a plain UTF-8 CSV as stripped text cells, line numbers kept."""
    import pandas as pd

    check_regular_file(path, what, "a regular file: give a CSV file")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise QlitError(f"{what} {path}: permission denied (the file is not readable by this user)") from None
    except OSError as err:
        raise QlitError(f"{what} {path}: cannot be read ({err.strerror or err})") from None
    if data.startswith(b"PAR1"):
        raise QlitError(f"{what} {path} is a Parquet file, not a CSV file; export it as CSV")
    if data.startswith(b"\x1f\x8b"):
        raise QlitError(f"{what} {path} is gzip-compressed; decompress it (gunzip) and give the CSV file")
    if data.startswith(b"PK\x03\x04"):
        raise QlitError(f"{what} {path} is a ZIP archive (a spreadsheet workbook?), not a CSV file; export it as CSV")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise QlitError(f"{what} {path} is UTF-16 text; save it as UTF-8 CSV")
    if b"\x00" in data:
        raise QlitError(f"{what} {path} holds NUL bytes: not a text CSV file (binary data, or UTF-16 without a BOM?)")
    # Spreadsheet programs often start a CSV with a UTF-8 byte-order mark, which would hide the first header name.
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise QlitError(
            f"{what} {path}: not a readable UTF-8 CSV file: line {line} holds byte 0x{data[err.start]:02x}, "
            "which is not UTF-8 (save the file as UTF-8)"
        ) from None
    rows: list[list[str]] = []
    lines: list[int] = []
    if _whitespace_separated(path, text):  # e.g. the 1000 Genomes panel, whose header ends in stray tabs
        for number, line in enumerate(text.splitlines(), start=1):
            if line.split():
                rows.append(line.split())
                lines.append(number)
    else:
        # The csv module, not pandas' parser: pandas pads a short row with empty cells, which must be refused.
        delimiter = "\t" if path.name.lower().endswith(".tsv") else ","
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            for row in reader:
                if row:
                    rows.append([cell.strip() for cell in row])
                    lines.append(reader.line_num)
        except csv.Error as err:
            raise QlitError(f"{what} {path}: line {reader.line_num}: not a readable CSV file ({err})") from None
    if not rows:
        return Table(pd.DataFrame(), str(path), text=True, lines=np.empty(0, dtype=np.int64))
    header, body = rows[0], rows[1:]
    _check_names(path, header)
    for line, row in zip(lines[1:], body):
        if len(row) != len(header):
            raise QlitError(f"{what} {path}: line {line} has {len(row)} columns, the header has {len(header)}")
    frame = pd.DataFrame(body, columns=header, dtype=object) if body else pd.DataFrame(columns=header, dtype=object)
    return Table(frame, str(path), text=True, lines=np.asarray(lines[1:], dtype=np.int64))


def _builtin(name: str) -> Table:
    import pandas as pd

    package, table = name.split(":", 1)
    if package == "sklearn":
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{table}")()
        frame = pd.DataFrame(bunch.data, columns=[str(c) for c in bunch.feature_names])
        frame["target"] = np.asarray(bunch.target_names)[bunch.target]
        return Table(frame, name, text=False)
    # Located without importing arch: its package import pulls in statsmodels, which qlit never uses.
    spec = importlib.util.find_spec("arch")
    if spec is None or spec.origin is None:
        raise QlitError(f"{name} needs the arch package, which bundles the data: pip install arch")
    path = Path(spec.origin).parent / "data" / table / f"{table}.csv.gz"
    if not path.is_file():
        raise QlitError(f"{name}: the installed arch package has no {path.name}")
    frame = _read_text(path, ",")
    return Table(frame, name, text=True)
