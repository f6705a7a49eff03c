#!/usr/bin/env python3
"""Markdown tables from redknot-eval JSON results: python3 fidelity_report.py results/*.json"""
import json
import sys

MAPS = ["dense", "profiled", "profiled-uniform", "random", "all-local"]


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
    seen = {m for v in teacher.values() for m in v} | {m for r in retrieval.values() for m in r["accuracy"]}
    maps = [m for m in MAPS if m in seen] + sorted(seen - set(MAPS))
    per_head = " (per-head windows in the profiled map)" if meta.get("per_head_windows") else ""
    print(f"baseline window {meta.get('window')}, sink {meta.get('sink')}{per_head}; global kv heads: "
          + ", ".join(f"{m} {meta.get('global_heads', {}).get(m)}" for m in maps))
    print()
    red = meta.get("kv_reduction_at_budget", {})
    if red:
        print("KV vs dense at " + str(meta.get("budget_tokens")) + " tokens (steady state): "
              + ", ".join(f"{m} {red[m]:.2f}x" for m in maps if m in red))
        print()
    print("| tokens | map | top-1 agreement | mean KL (nats) | NLL (nats/token) | KV MiB | KV vs dense |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for L in sorted(teacher):
        dense_kv = teacher[L]["dense"]["kv_bytes"]
        for m in maps:
            if m not in teacher[L]:
                continue
            v = teacher[L][m]
            print(f"| {L} | {m} | {v['top1_agreement']:.4f} | {v['mean_kl']:.4f} | {v['nll']:.3f} | "
                  f"{v['kv_bytes'] / 2**20:.1f} | {dense_kv / v['kv_bytes']:.2f}x |")
    print()
    print("| task | tokens | cases | " + " | ".join(maps) + " |")
    print("|---|---:|---:|" + "---:|" * len(maps))
    for (task, L) in sorted(retrieval):
        r = retrieval[(task, L)]
        n = len(r["cases"])
        print(f"| {task} | {L} | {n} | " + " | ".join(f"{r['accuracy'][m]:.2f}" if m in r["accuracy"] else "–" for m in maps) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
