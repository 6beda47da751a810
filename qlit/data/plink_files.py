"""PLINK filesets (``.bed/.bim/.fam``) and sample sheets, read and checked; a new fileset's SNPs matched to a model's.

A fileset is read lazily with bed-reader, a block of SNPs at a time, as int8, after its three files were checked
against each other (sizes, duplicate ids). `PlinkDataModule` (`qlit.data.plink`) builds on these readers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from qlit.data.shared import remembered
from qlit.data.tables import read_table
from qlit.errors import QlitError
from qlit.io.files import check_regular_file

BED_MAGIC = b"\x6c\x1b"
AMBIGUOUS = ({"A", "T"}, {"C", "G"})  # a swap of these alleles looks the same as a strand flip


class Matched(NamedTuple):
    """The model's SNPs found in a new fileset.

    Attributes:
        columns: The new fileset's columns holding them.
        fitted: Their indices among the model's SNPs.
        flip: Whether each is listed with swapped alleles (its counts become ``2 - g``).
        other_alleles: Model SNPs found under their id with other alleles (left out).
        ambiguous: Strand-ambiguous (A/T, C/G) model SNPs found but left out.
    """

    columns: np.ndarray
    fitted: np.ndarray
    flip: np.ndarray
    other_alleles: int
    ambiguous: int


class PlinkFileset:
    """A checked PLINK fileset: the ``.bed`` with its ``.bim`` and ``.fam``, read lazily with bed-reader.

    Args:
        bed_file: The ``.bed``; the ``.bim`` and ``.fam`` of the same name must be beside it.
        what: What the fileset is, for messages (``"bed_file"``, ``"predict file"``).

    Raises:
        QlitError: a file is missing, the ``.bed`` is not a SNP-major PLINK file, its size does not
            match the individuals of the ``.fam`` and SNPs of the ``.bim`` (truncated or mismatched),
            or the ``.bim`` lists a SNP id twice or the ``.fam`` an individual id (IID) twice: SNPs are
            matched by id, individuals named and labelled by IID, so either would be ambiguous.
    """

    def __init__(self, bed_file: str | Path, what: str = "bed_file") -> None:
        from bed_reader import open_bed  # imported here: only PLINK input needs it

        bed = Path(bed_file)
        check_regular_file(bed, what, "a regular file: give the .bed of a PLINK fileset")
        stem = str(bed)[: -len(bed.suffix)] if bed.suffix.lower() == ".bed" else str(bed)
        self.bed, self.bim, self.fam = bed, Path(stem + ".bim"), Path(stem + ".fam")
        for part in (self.bim, self.fam):
            if not part.exists():
                raise QlitError(f"{what} {bed}: no {part} beside it (a PLINK .bed needs its .bim and .fam)")
            check_regular_file(part, f"{what} {bed}: its", "a regular file")
        with bed.open("rb") as handle:
            head = handle.read(3)
        if head[:2] != BED_MAGIC:
            raise QlitError(f"{what} {bed} is not a PLINK .bed file (it does not start with the bytes 6c 1b)")
        if head[2:] != b"\x01":
            raise QlitError(f"{what} {bed} is an individual-major .bed (PLINK 1.0); rewrite it with plink --make-bed")
        try:
            columns, properties = _bim(self.bim)
            self._open = open_bed(bed, fam_location=self.fam, bim_location=self.bim, skip_format_check=True,
                                  properties=properties)
            self.iid = [str(v) for v in self._open.iid]
            self.sid, self.allele_1, self.allele_2 = columns or (
                [str(v) for v in getattr(self._open, name)] for name in ("sid", "allele_1", "allele_2")
            )
        except (ValueError, OSError, IndexError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise QlitError(f"{what} {bed}: its .fam or .bim cannot be read ({message})") from None
        self.n_individuals, self.n_snps = len(self.iid), len(self.sid)
        if self.n_individuals == 0 or self.n_snps == 0:
            empty = self.fam if self.n_individuals == 0 else self.bim
            raise QlitError(f"{what} {bed}: {empty} lists no {'individual' if empty == self.fam else 'SNP'}")
        self._check_size(what)
        _refuse_duplicate(self.sid, what, bed, self.bim, "SNP id", "plink2 --rm-dup, or --set-all-var-ids")
        _refuse_duplicate(self.iid, what, bed, self.fam, "individual id (IID)", "give each individual its own IID")

    def _check_size(self, what: str) -> None:
        """Refuse a ``.bed`` whose size disagrees with the ``.fam`` and ``.bim``, blaming the likely culprit.

        Each SNP takes ``ceil(individuals / 4)`` bytes. A size that fits the ``.bim``'s SNPs at another
        whole number of bytes per SNP points at the ``.fam`` (a row too many or too few); one that fits
        the ``.fam``'s individuals at another number of SNPs points at the ``.bim``; anything else is a
        truncated or overlong ``.bed``.
        """
        bed, n, m = self.bed, self.n_individuals, self.n_snps
        per_snp = (n + 3) // 4
        expected = 3 + m * per_snp
        size = bed.stat().st_size
        if size == expected:
            return
        body = size - 3
        if body > 0 and body % m == 0:
            fits = body // m  # bytes per SNP: room for 4 * fits - 3 .. 4 * fits individuals
            raise QlitError(
                f"{what} {bed}: its .fam {self.fam} lists {n} individuals, but the .bed's {size} bytes hold "
                f"{fits} bytes per SNP for the {m} SNPs of {self.bim}, which is {4 * fits - 3}-{4 * fits} individuals; "
                "the .fam has rows too many or too few (or belongs to another fileset)"
            )
        if body > 0 and body % per_snp == 0:  # a .bed cut at a SNP's end looks the same as a .bim row too many
            held = body // per_snp
            lead = (
                f"is truncated, or its .bim {self.bim} has {m - held} row{'s' * (m - held != 1)} too many" if held < m
                else f"holds {held - m} SNPs more than its .bim {self.bim} lists"
            )
            raise QlitError(
                f"{what} {bed} {lead}: the .bim lists {m} SNPs, but the .bed's {size} bytes hold {held} SNPs of the "
                f"{n} individuals of {self.fam}"
            )
        state = "truncated" if size < expected else "longer than its .bim and .fam say"
        raise QlitError(
            f"{what} {bed} is {state}: {size} bytes, but {n} individuals x {m} SNPs need {expected}"
        )

    def read(self, rows: np.ndarray, start: int, stop: int) -> np.ndarray:
        """int8 allele-1 counts of ``rows`` at SNPs ``start:stop`` (-127 for a missing call)."""
        return self._open.read(index=np.s_[np.asarray(rows), start:stop], dtype="int8", order="F")  # .bed order: fast

    def read_snps(self, rows: np.ndarray, snps: np.ndarray) -> np.ndarray:
        """int8 allele-1 counts of ``rows`` at the SNP indices ``snps``."""
        return self._open.read(index=np.s_[np.asarray(rows), np.asarray(snps)], dtype="int8", order="F")

    def sha256(self) -> str:
        """Hex SHA-256 of the three files' bytes, read in chunks."""
        digest = hashlib.sha256()
        for path in (self.bed, self.bim, self.fam):
            with path.open("rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
            digest.update(b"\0")
        return digest.hexdigest()


def _bim(bim: Path) -> tuple[tuple[list[str], list[str], list[str]] | None, dict[str, np.ndarray]]:
    """`_bim_columns`, and the same as bed-reader's properties; parsed once per file and command (`shared_data`).

    ``qlit cv`` opens the fileset in every data module it builds (2k + 1); at 1M SNPs a parse took 0.5 s.
    """

    def parse() -> tuple:
        columns = _bim_columns(bim)  # bed-reader's own parse of a 1M-SNP .bim takes seconds
        return columns, {} if columns is None else dict(zip(("sid", "allele_1", "allele_2"), map(np.array, columns)))

    stat = bim.stat()
    return remembered(("bim", str(bim.resolve()), stat.st_size, stat.st_mtime_ns), parse)


def _bim_columns(bim: Path) -> tuple[list[str], list[str], list[str]] | None:
    """The SNP ids and alleles of a plain ``.bim`` (six fields on every line), as bed-reader reads them.

    ``None`` for anything else (fields not split by tabs, a comment sign, a blank or short line, bytes that
    are not text): bed-reader then reads it, and refuses it in its own words.
    """
    try:
        text = bim.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    lines = text.count("\n") + (not text.endswith("\n"))
    fields = text.split()
    if "#" in text or " " in text or "\r" in text or "\n\n" in text or text.startswith("\n") or len(fields) != 6 * lines:
        return None
    return fields[1::6], fields[4::6], fields[5::6]


def _refuse_duplicate(ids: list[str], what: str, bed: Path, part: Path, kind: str, fix: str) -> None:
    """Raise a one-line `QlitError` naming ``part`` and the first id that ``ids`` (its rows) list twice."""
    if len(set(ids)) == len(ids):
        return
    first: dict[str, int] = {}
    for row, name in enumerate(ids):
        if name in first:
            raise QlitError(
                f"{what} {bed}: its {part} lists {kind} {name!r} twice (lines {first[name] + 1} and {row + 1}); "
                f"ids must be unique ({fix})"
            )
        first[name] = row


def read_sample_sheet(path: str | Path, sample_column: str, label_column: str) -> dict[str, str]:
    """Sample id -> label from a sample sheet (the 1000 Genomes panel: ``sample pop super_pop gender``).

    Args:
        path: CSV, TSV or whitespace-separated text with a header row.
        sample_column: The column of sample ids (matched to the ``.fam`` IID).
        label_column: The column of labels.

    Raises:
        QlitError: the file cannot be read, lacks a named column, or lists a sample twice.
    """
    table = read_table(path, "labels_file", text_cells=True)
    if len(table.frame) == 0:
        raise QlitError(f"labels_file {path}: no samples (expected a header row and one row per sample)")
    table.require(sample_column, "the sample_column")
    table.require(label_column, "the label_column")
    samples, labels = table.frame[sample_column].tolist(), table.frame[label_column].tolist()
    seen: dict[str, int] = {}
    for row, sample in enumerate(samples):
        if sample in seen:
            raise QlitError(f"labels_file {path}: sample {sample!r} appears twice ({table.where(row)})")
        seen[sample] = row
    return {s: lab for s, lab in zip(samples, labels) if lab != ""}


def match_snps(new: PlinkFileset, snps: dict[str, list[str]], strand_ambiguous: str) -> Matched:
    """Columns of ``new`` holding the model's SNPs, matched by id and alleles (see `Matched`).

    A model SNP whose alleles are A/T or C/G is left out under ``strand_ambiguous: absent``: listed
    swapped it may be a swap (flip the counts) or the other strand (keep them), and listed alike, the
    other strand and a swap together; nothing in the files tells these apart.
    """
    ids, a1, a2 = snps["id"], snps["allele_1"], snps["allele_2"]
    where = {sid: j for j, sid in enumerate(new.sid)}
    columns, fitted, flip, other_alleles, ambiguous = [], [], [], 0, 0
    for k, sid in enumerate(ids):
        j = where.get(sid)
        if j is None:
            continue
        if strand_ambiguous == "absent" and {a1[k].upper(), a2[k].upper()} in AMBIGUOUS:
            ambiguous += 1
            continue
        if (new.allele_1[j], new.allele_2[j]) == (a1[k], a2[k]):
            swapped = False
        elif (new.allele_1[j], new.allele_2[j]) == (a2[k], a1[k]):
            swapped = True
        else:
            other_alleles += 1
            continue
        columns.append(j)
        fitted.append(k)
        flip.append(swapped)
    if not columns:
        left_out = (
            f"; its {ambiguous} shared A/T and C/G SNPs are strand-ambiguous and left out (strand_ambiguous: "
            "match uses them as listed)" if ambiguous else ""
        )
        raise QlitError(
            f"predict file {new.bed} shares no SNP with the {len(ids)} SNPs the model was trained on "
            f"(matched by SNP id and alleles; the model's start {', '.join(ids[:3])}, the file's "
            f"{', '.join(new.sid[:3])}){left_out}"
        )
    return Matched(
        np.asarray(columns), np.asarray(fitted), np.asarray(flip, dtype=bool), other_alleles, ambiguous
    )
