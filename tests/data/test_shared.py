"""What `shared_data` hands out: equal values that callers may change without touching what it keeps."""

from __future__ import annotations

import numpy as np

from qlit.data.shared import remembered, shared_data
from tests.data.test_plink import copy_fileset, fileset  # noqa: F401  (fileset: the shared fixture)


def test_remembered_computes_once_and_hands_out_independent_copies():
    calls = []

    def fit():
        calls.append(1)
        return np.arange(3.0), {"snps": {"id": ["rs1", "rs2"]}, "state": [np.ones(2)]}, ["a", "b"]

    with shared_data():
        first = remembered(("key",), fit)
        second = remembered(("key",), fit)
        assert len(calls) == 1
        first[0][0] = 99.0
        first[1]["snps"]["id"].append("rs3")
        first[1]["state"][0][:] = 7.0
        first[2][0] = "changed"
        third = remembered(("key",), fit)
    for later in (second, third):
        assert later[0].tolist() == [0.0, 1.0, 2.0]
        assert later[1]["snps"]["id"] == ["rs1", "rs2"]
        assert later[1]["state"][0].tolist() == [1.0, 1.0]
        assert later[2] == ["a", "b"]
    assert second[2] is not third[2] and second[1]["snps"]["id"] is not third[1]["snps"]["id"]
    remembered(("key",), fit)  # outside the block nothing is kept
    assert len(calls) == 2


def test_a_bim_is_parsed_once_per_command_and_again_when_it_changes(fileset, tmp_path, monkeypatch):  # noqa: F811
    import os

    from qlit.data import plink_files
    from qlit.data.plink_files import PlinkFileset

    own = copy_fileset(fileset, tmp_path / "own" / "sim")
    parse, parsed = plink_files._bim_columns, []
    monkeypatch.setattr(plink_files, "_bim_columns", lambda bim: parsed.append(bim) or parse(bim))
    with shared_data():
        first, second = PlinkFileset(own), PlinkFileset(own)
        assert len(parsed) == 1 and first.sid == second.sid and first.sid is not second.sid
        bim = own.with_suffix(".bim")
        lines = bim.read_text().splitlines()
        lines[0] = lines[0].replace(first.sid[0], "rs_renamed", 1)
        bim.write_text("\n".join(lines) + "\n")
        os.utime(bim, ns=(bim.stat().st_atime_ns, bim.stat().st_mtime_ns + 10**9))
        third = PlinkFileset(own)
    assert len(parsed) == 2 and third.sid[0] == "rs_renamed" and third.sid[1:] == first.sid[1:]
    PlinkFileset(own)  # outside the block: parsed again
    assert len(parsed) == 3
