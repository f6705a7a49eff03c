#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_c_api: deterministic pseudo-random byte strings of several lengths.

Every byte of an input is meaningful to the target (store shape, then one call per few bytes), so random
bytes already are valid call sequences; the lengths range from a handful of calls to ~100. Usage:
    python3 tests/fuzz/gen_corpus_c_api.py tests/fuzz/corpus/c_api [count]
"""
import os
import random
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "c_api")
count = int(sys.argv[2]) if len(sys.argv) > 2 else 40
os.makedirs(out, exist_ok=True)
rng = random.Random(20240607)
for i in range(count):
    n = rng.choice([24, 48, 96, 160, 256, 400, 640])
    data = bytes(rng.randrange(256) for _ in range(n))
    with open(os.path.join(out, f"seed_{i:03d}"), "wb") as f:
        f.write(data)
