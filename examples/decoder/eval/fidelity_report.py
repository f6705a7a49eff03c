#!/usr/bin/env python3
"""Markdown tables from redknot-eval JSON results: python3 fidelity_report.py results/*.json"""
import json
import sys

MAPS = ["dense", "profiled", "random", "all-local"]


def main(paths):
    teacher, retrieval, meta = {}, {}, {}
    for p in paths:
        d = json.load(open(p))
        meta = d
        for L, per_map in d.get("teacher", {}).items():
            teacher[int(L)] = per_map
        for task in ("needle", "multikey"):
            for L, r in d.get(task, {}).items():
                retrieval[(task, int(L))] = r
    maps = [m for m in MAPS if any(m in v for v in teacher.values())] or MAPS
    print(f"window {meta.get('window')}, sink {meta.get('sink')}; global kv heads: "
          + ", ".join(f"{m} {meta.get('global_heads', {}).get(m)}" for m in maps))
    print()
    print("| tokens | map | top-1 agreement | mean KL (nats) | NLL (nats/token) | KV MiB | KV vs dense |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for L in sorted(teacher):
        dense_kv = teacher[L]["dense"]["kv_bytes"]
        for m in maps:
            v = teacher[L][m]
            print(f"| {L} | {m} | {v['top1_agreement']:.4f} | {v['mean_kl']:.4f} | {v['nll']:.3f} | "
                  f"{v['kv_bytes'] / 2**20:.1f} | {dense_kv / v['kv_bytes']:.2f}x |")
    print()
    print("| task | tokens | cases | " + " | ".join(maps) + " |")
    print("|---|---:|---:|" + "---:|" * len(maps))
    for (task, L) in sorted(retrieval):
        r = retrieval[(task, L)]
        n = len(r["cases"])
        print(f"| {task} | {L} | {n} | " + " | ".join(f"{r['accuracy'][m]:.2f}" for m in maps) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
