#!/usr/bin/env python3
"""Summarise scripts/gpu.sh benchmark output (JSON lines) as Markdown for docs/benchmarks.md, check the issue's
targets, and plot decode latency vs context.

    python3 benchmarks/gpu/report.py bench.jsonl [--plot decode_latency.png] > bench.md
"""
import argparse
import collections
import json
import sys


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def pick(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items()) and "error" not in r]


def fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("jsonl")
    ap.add_argument("--plot", default="")
    a = ap.parse_args()
    rows = load(a.jsonl)
    out = []
    copy = [r["copy_gbs"] for r in rows if r.get("bench") == "copy"]
    dev = next((r["device"] for r in rows if "device" in r), "?")
    out.append(f"Device: {dev}; measured D2D copy bandwidth: {fmt(copy[0] if copy else None, 0)} GB/s (read + write).\n")

    # Decode: one row per (batch, context): ours dense, ours head-aware, peers dense.
    out.append("### Decode (bf16, head_dim 128, 32 q / 8 kv heads, page 16)\n")
    out.append("| batch | context | dense ms | dense GB/s | % copy BW | head-aware ms | speedup vs dense | "
               "SDPA-flash ms | FlashInfer ms |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["batch"], r["context"]) for r in rows if r.get("bench") == "decode" and "batch" in r})
    checks = []
    for b, c in keys:
        d = pick(rows, bench="decode", impl="redknot", problem="dense", batch=b, context=c)
        h = pick(rows, bench="decode", impl="redknot", problem="head_aware", batch=b, context=c)
        s = pick(rows, bench="decode", impl="torch_sdpa_flash", batch=b, context=c)
        fi = pick(rows, bench="decode", impl="flashinfer", batch=b, context=c)
        d, h = (d[0] if d else None), (h[0] if h else None)
        out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            b, c, fmt(d and d["ms"], 3), fmt(d and d["gbs"], 0), fmt(d and 100 * d["frac_copy_bw"], 1),
            fmt(h and h["ms"], 3), fmt(h and h["speedup_vs_dense"], 2), fmt(s[0]["ms"] if s else None, 3),
            fmt(fi[0]["ms"] if fi else None, 3)))
        if b == 64 and c == 32768 and d:
            checks.append(("decode 64x32K dense >= 80% copy BW", d["frac_copy_bw"] >= 0.8))
            if fi:
                checks.append(("decode 64x32K dense no slower than FlashInfer", d["ms"] <= fi[0]["ms"]))
        if h and c == 32768:
            checks.append((f"decode b{b} 32K head-aware >= 5x dense", h["speedup_vs_dense"] >= 5))
        if h and c == 131072:
            checks.append((f"decode b{b} 128K head-aware >= 6x dense", h["speedup_vs_dense"] >= 6))

    out.append("\n### Prefill (bf16, head_dim 128, 32 q / 8 kv heads, one sequence, causal)\n")
    out.append("| context | dense ms | dense TFLOP/s | SDPA-flash ms | SDPA TFLOP/s | ours / SDPA | head-aware ms | "
               "speedup vs SDPA dense |")
    out.append("|---|---|---|---|---|---|---|---|")
    for c in sorted({r["context"] for r in rows if r.get("bench") == "prefill" and "context" in r}):
        d = pick(rows, bench="prefill", impl="redknot", problem="dense", context=c)
        h = pick(rows, bench="prefill", impl="redknot", problem="head_aware", context=c)
        s = pick(rows, bench="prefill", impl="torch_sdpa_flash", context=c)
        d, h, s = (d[0] if d else None), (h[0] if h else None), (s[0] if s else None)
        ratio = d["tflops"] / s["tflops"] if d and s else None
        sp = s["ms"] / h["ms"] if h and s else None
        out.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            c, fmt(d and d["ms"], 2), fmt(d and d["tflops"], 0), fmt(s and s["ms"], 2), fmt(s and s["tflops"], 0),
            fmt(ratio, 2), fmt(h and h["ms"], 2), fmt(sp, 2)))
        if ratio is not None:
            checks.append((f"prefill {c} dense >= 70% of SDPA-flash TFLOP/s", ratio >= 0.7))
        if sp is not None and c == 32768:
            checks.append(("prefill 32K head-aware >= 4x SDPA-flash dense", sp >= 4))

    out.append("\n### Targets\n")
    for name, ok in checks:
        out.append(f"- {'PASS' if ok else 'FAIL'}: {name}")
    print("\n".join(out))

    if a.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception as e:  # plotting is optional
            print(f"(no plot: {e})", file=sys.stderr)
            return 0
        series = collections.defaultdict(list)
        for r in rows:
            if r.get("bench") == "decode" and "ms" in r and r.get("batch") != 64:
                series[f"{r['impl']} {r['problem']} (batch {r['batch']})"].append((r["context"], r["ms"]))
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("decode step latency, one layer (ms)")
        ax.set_title(f"Decode latency vs context — {dev}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
