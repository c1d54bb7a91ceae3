"""Splitting a student batch into labeled and pseudo-labeled parts (the mixing itself is tested with train)."""

from __future__ import annotations

import pytest

from pseudodepth.data.mixing import split_batch_size


@pytest.mark.parametrize("batch_size, ratio, expected", [
    (12, (1, 2), (4, 8)), (3, (1, 2), (1, 2)), (2, (1, 2), (1, 1)), (8, (1, 1), (4, 4)), (7, (1, 2), (2, 5)),
])
def test_split_batch_size(batch_size, ratio, expected):
    assert split_batch_size(batch_size, ratio) == expected


def test_split_batch_size_rejects_impossible_batches():
    with pytest.raises(ValueError, match="at least 2"):
        split_batch_size(1)
    with pytest.raises(ValueError, match="positive"):
        split_batch_size(6, (0, 1))
