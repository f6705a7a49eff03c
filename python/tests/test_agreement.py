"""Python agrees with C++ and C (tests/c_api/test_agreement.cpp) on the cases of tests/agreement_cases.json:
the same input gets the same verdict -- error class and message fragment -- since every value rule lives once,
in the C++ core, and the bindings only translate types."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import redknot

CASES_FILE = Path(__file__).resolve().parents[2] / "tests" / "agreement_cases.json"
CASES = json.loads(CASES_FILE.read_text())["cases"] if CASES_FILE.exists() else []
L, HQ, HK, D, N = 2, 4, 2, 16, 3


def _number(case: dict, key: str, default: float) -> float:
    return float(case.get(key, default))  # "nan", "inf", "-inf" are strings in the JSON


def _call(case: dict) -> None:
    op = case["op"]
    if op in ("run", "plan", "pages_per_sequence"):
        st = redknot.Store(L, HQ, HK, D, num_pages=16, dtype="f32", page_size=4)
        s = st.create_sequence()
        kv = np.full((N, HK, D), 0.5, np.float32)
        for layer in range(L):
            st.append(s, layer, kv, kv, np.arange(N))
        if op == "pages_per_sequence":
            st.pages_per_sequence(case["num_tokens"])
            return
        st.plan([case.get("seq", s) if op == "plan" else s], [N], np.arange(N))
        st.run(np.ones((N, HQ, D), np.float32), case.get("layer", 0), sm_scale=_number(case, "sm_scale", 0.0),
               num_threads=case.get("num_threads", 0))
    elif op == "peak_sequence_pages":
        redknot.HeadMap.all_global(L, HK).peak_sequence_pages(case.get("page_size", 4), case.get("num_tokens", 0),
                                                              case.get("chunk", 1))
    elif op == "to_json":
        redknot.HeadMap.all_global(L, HK).to_json(case.get("indent", 2))
    elif op == "with_global_ratio":
        redknot.HeadMap.with_global_ratio(L, HK, _number(case, "global_ratio", 0.5), 4, 1)
    elif op == "uniform":
        redknot.HeadMap.uniform(case.get("num_layers", 2), case.get("num_kv_heads", 2), "global")
    else:
        raise AssertionError(f"unknown op {op}")


@pytest.mark.skipif(not CASES, reason="tests/agreement_cases.json is not next to this checkout")
@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_same_verdict_as_cpp_and_c(case):
    if case["error"] is None:
        _call(case)
        return
    with pytest.raises(getattr(redknot, case["error"])) as info:
        _call(case)
    assert case["fragment"] in str(info.value), str(info.value)
