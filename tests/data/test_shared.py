"""What `shared_data` hands out: equal values that callers may change without touching what it keeps."""

from __future__ import annotations

import numpy as np

from qlit.data.shared import remembered, shared_data


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
