"""HeadMap: the RedKnot JSON schema in and out, policies, errors."""

from __future__ import annotations

import copy
import json
import pickle

import pytest

import redknot
from conftest import MIXED_MAP


def test_json_roundtrip_and_policies(tmp_path):
    m = redknot.HeadMap.from_json(json.dumps(MIXED_MAP))
    assert (m.num_layers, m.num_kv_heads) == (2, 2)
    assert m.policy(0, 1) == m.raw(0, 1)
    p = m.policy(0, 1)
    assert (p.cls, p.window, p.sink, p.is_local()) == ("local", 7, 3, True)
    assert m.policy(1, 0).cls == "local"  # 'sink_dominant' is an alias of local
    assert m.policy(1, 1).cls == "retrieval"
    assert m.count_local() == 2 and m.count_global_like() == 2
    assert m.global_ratio() == pytest.approx(0.5)
    again = redknot.HeadMap.from_json(m.to_json())
    assert again == m
    path = tmp_path / "map.json"
    m.save(path)
    assert redknot.HeadMap.load(path) == m
    assert redknot.HeadMap.load(str(path)) == m
    assert pickle.loads(pickle.dumps(m)) == m
    assert copy.deepcopy(m) == m
    assert "local=2" in repr(m)


def test_dense_prefix_overrides_classes():
    d = dict(MIXED_MAP, dense_prefix_layers=1)
    m = redknot.HeadMap.from_json(json.dumps(d))
    assert m.dense_prefix_layers == 1
    assert m.policy(0, 1).cls == "dense"
    assert m.raw(0, 1).cls == "local"


def test_builders_and_set():
    m = redknot.HeadMap.with_global_ratio(4, 8, 0.125, 16, 4)
    assert m.count_global_like() == 4
    u = redknot.HeadMap.uniform(2, 2, "streaming", window=8, sink=2)
    assert u.policy(1, 1).cls == "local"
    u.set(1, 1, "global")
    assert u.policy(1, 1).cls == "global" and u.policy(1, 1).window == -1
    g = redknot.HeadMap.all_global(2, 2)
    assert g.count_local() == 0


@pytest.mark.parametrize("text,fragment", [
    ("{oops", "does not parse"),
    ("[]", "top level must be an object"),
    ('{"num_layers": 1, "num_kv_heads": 1}', "kv_head_classification"),
    ('{"num_layers": 1, "num_kv_heads": 1, "kv_head_classification": [["weird"]], "kv_head_max_distance": [[-1]]}',
     "kv_head_classification[0][0]"),
    ('{"num_layers": 1, "num_kv_heads": 1, "kv_head_classification": [["local"]], "kv_head_max_distance": [[0]]}',
     "must be >= 1 for a local head"),
    ('{"num_layers": 1, "num_kv_heads": 2, "kv_head_classification": [["local"]], "kv_head_max_distance": [[4]]}',
     "num_kv_heads=2 entries"),
])
def test_bad_json(text, fragment):
    with pytest.raises(ValueError) as info:
        redknot.HeadMap.from_json(text)
    assert fragment in str(info.value)


def test_bad_builder_args():
    with pytest.raises(ValueError, match="head class 'nope'"):
        redknot.HeadMap.uniform(2, 2, "nope")
    with pytest.raises(ValueError, match="global_ratio"):
        redknot.HeadMap.with_global_ratio(2, 2, 1.5, 4, 0)
    m = redknot.HeadMap.all_global(2, 2)
    with pytest.raises(ValueError, match="layer=5"):
        m.policy(5, 0)
    with pytest.raises(ValueError, match="window=0"):
        m.set(0, 0, "local", window=0)


def test_peak_sequence_pages_sizes_a_chunked_prefill():
    m = redknot.HeadMap.uniform(2, 2, "local", window=6, sink=2)
    m.set(0, 0, "global")
    # global: all 7 pages of 100 tokens; each local head: 1 sink page + ceil(36/16) + 1 = 5
    assert m.peak_sequence_pages(16, 100, 32) == 7 + 3 * 5
    assert m.peak_sequence_pages(16, 100, 1) == 7 + 3 * (1 + 1 + 1)
    with pytest.raises(ValueError, match="chunk=0"):
        m.peak_sequence_pages(16, 100, 0)
