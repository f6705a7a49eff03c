"""Store.append_batch: one call for a batch of sequences of one layer, equal to per-sequence appends."""

from __future__ import annotations

import numpy as np
import pytest

import redknot
from conftest import make_store


def test_append_batch_equals_per_sequence_appends():
    batched, single = make_store(), make_store()
    rng = np.random.default_rng(7)
    ids = [batched.create_sequence() for _ in range(3)]
    assert [single.create_sequence() for _ in range(3)] == ids
    for step in range(4):
        for layer in range(batched.num_layers):
            counts = [(i + step) % 3 for i in range(3)]  # some items take no tokens
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
            pos = np.concatenate([np.arange(batched.next_position(s, layer), batched.next_position(s, layer) + n)
                                  for s, n in zip(ids, counts)]).astype(np.int32)
            k = rng.uniform(-1, 1, (len(pos), 2, 16)).astype(np.float32)
            v = rng.uniform(-1, 1, (len(pos), 2, 16)).astype(np.float32)
            batched.append_batch(layer, ids, offsets, k, v, pos)
            for i, s in enumerate(ids):
                b, e = offsets[i], offsets[i + 1]
                if b < e:
                    single.append(s, layer, k[b:e], v[b:e], pos[b:e])
    assert batched.stats()["pages_in_use"] == single.stats()["pages_in_use"]
    q = rng.uniform(-1, 1, (3, 4, 16)).astype(np.float32)
    for st in (batched, single):
        st.plan(ids, [1, 1, 1], [st.next_position(s, 1) - 1 for s in ids])
    out_b, out_s = batched.run(q, 1), single.run(q, 1)
    np.testing.assert_array_equal(out_b, out_s)


def test_append_batch_bad_input_changes_nothing():
    st = make_store()
    a, b = st.create_sequence(), st.create_sequence()
    k = np.zeros((3, 2, 16), np.float32)
    st.append(a, 0, k, k, [0, 1, 2])
    before = (st.stats()["pages_in_use"], st.next_position(a, 0), st.next_position(b, 0))
    with pytest.raises(redknot.InvalidArgument, match="must be >= 3"):
        st.append_batch(0, [b, a], [0, 2, 3], k, k, [0, 1, 2])  # a's item is stale: b's must not land
    with pytest.raises(redknot.InvalidArgument, match="token_offsets"):
        st.append_batch(0, [a, b], [0, 2], k, k, [3, 4, 5])
    with pytest.raises(redknot.InvalidArgument, match="appears twice"):
        st.append_batch(0, [a, a], [0, 1, 3], k, k, [3, 4, 5])
    with pytest.raises(redknot.NotFound):
        st.append_batch(0, [a, 12345], [0, 1, 3], k, k, [3, 0, 1])
    with pytest.raises(redknot.InvalidArgument, match="layer"):
        st.append_batch(2**40, [a], [0, 3], k, k, [3, 4, 5])
    assert (st.stats()["pages_in_use"], st.next_position(a, 0), st.next_position(b, 0)) == before
