#!/usr/bin/env python3
"""Tables and an accuracy-vs-TTFT plot from redknot-rag-eval JSON results.

    python3 rag_report.py results/*.json [--png plot.png]

A later file's results for a length replace an earlier file's. The plot is a PNG when matplotlib is available
(--png), else ASCII (printed; log-scale TTFT on x)."""
import json
import math
import signal
import sys


def load(paths):
    lengths, meta = {}, {}
    for p in paths:
        d = json.load(open(p))
        meta[p] = d
        # A run cut short has its last length under lengths_partial (summary of the requests done).
        done = d.get("lengths", []) + ([d["lengths_partial"]] if "lengths_partial" in d else [])
        for jl in done:
            if "summary" in jl:
                lengths[jl["length"]] = (jl, d)
    return lengths, meta


def table(jl, d):
    mem = jl["memory"]
    mib = lambda b: b / 1048576.0
    mb = lambda b: f"{mib(b):.0f} MiB" if b else "- (method not run)"
    out = []
    out.append(
        f"**{jl['length']}-token requests**: {len(jl['requests'])} requests, "
        f"{sum(r['tokens'] for r in jl['requests']) / len(jl['requests']):.0f} tokens on average "
        f"({sum(len(r['docs']) for r in jl['requests']) / len(jl['requests']):.1f} documents); "
        f"KV of the first {mem['requests']} requests alive together: documents once "
        f"{mib(mem['docs_once_bytes']):.0f} MiB, own tokens {mib(mem['own_tokens_bytes']):.0f} MiB, "
        f"one copy per request {mb(mem['one_copy_dense_bytes'])} dense / "
        f"{mb(mem['one_copy_headaware_bytes'])} head-aware")
    out.append("")
    # Bytes of one token on every head (a chunk holds every head: kv_bytes = heads * pages * page_bytes).
    doc = d["documents"][0]
    per_token = doc["kv_bytes"] / (-(-doc["tokens"] // 16) * 16)
    kept = jl["requests"][:mem["requests"]]
    out.append("| method | TTFT warm median (mean) | TTFT cold median | speed-up vs dense (median per request) | accuracy | agreement "
               "| KL mean | recomputed | KV, " + str(mem["requests"]) + " requests | KV / (docs once + own) "
               "| KV / (docs once + own + recomputed rows) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    # Load varies over a run: the speed-up is the median over requests of dense's TTFT / the method's on the
    # same request (all methods of a request run back to back).
    def speedup(m):
        r = sorted(q["methods"]["dense"]["ttft_s"] / q["methods"][m]["ttft_s"] for q in jl["requests"])
        n = len(r)
        return r[n // 2] if n % 2 else 0.5 * (r[n // 2 - 1] + r[n // 2])

    for m in d["methods"]:
        s = jl["summary"].get(m)
        if s is None:
            continue
        ratio = f"{s['kv_vs_docs_plus_own']:.2f}x" if "kv_vs_docs_plus_own" in s else "-"
        ratio2 = "-"
        if "kv_vs_docs_plus_own" in s:
            rows = sum(r["methods"][m]["recomputed"] for r in kept) * per_token
            ref = mem["docs_once_bytes"] + mem["own_tokens_bytes"] + rows
            ratio2 = f"{s['kv_bytes_concurrent'] / ref:.2f}x"
        out.append(
            f"| {m} | {s['ttft_median_s']:.2f} s ({s['ttft_mean_s']:.2f}) | {s['ttft_cold_median_s']:.2f} s "
            f"| {speedup(m):.1f}x | {s['accuracy']:.2f} | {s['agreement']:.2f} | {s['kl_mean']:.4f} "
            f"| {100 * s['recomputed_fraction']:.1f}% | {mib(s['kv_bytes_concurrent']):.0f} MiB | {ratio} | {ratio2} |")
    return "\n".join(out)


def ascii_plot(points, width=64, height=16):
    """points: [(label, ttft, accuracy)] -> lines; x log-scale."""
    xs = [math.log10(max(p[1], 1e-3)) for p in points]
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-9:
        x1 = x0 + 1
    ys = [p[2] for p in points]
    y0, y1 = min(min(ys), 0.5), 1.0
    grid = [[" "] * width for _ in range(height)]
    for (label, _, acc), x in zip(points, xs):
        c = int(round((x - x0) / (x1 - x0) * (width - 1)))
        r = int(round((y1 - acc) / (y1 - y0) * (height - 1))) if y1 > y0 else 0
        cell = grid[r][c]
        grid[r][c] = label if cell == " " else "*"
    lines = []
    for i, row in enumerate(grid):
        y = y1 - (y1 - y0) * i / (height - 1)
        lines.append(f"{y:5.2f} |" + "".join(row))
    lines.append("      +" + "-" * width)
    lo, hi = 10 ** x0, 10 ** x1
    lines.append(f"       {lo:<.2f} s" + " " * (width - 18) + f"{hi:>.2f} s")
    lines.append("       TTFT warm, median (log scale) ->")
    return lines


def main(argv):
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under `| head`
    png = None
    if "--png" in argv:
        i = argv.index("--png")
        png = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    lengths, _ = load(argv)
    for L in sorted(lengths):
        jl, d = lengths[L]
        print(table(jl, d))
        print()
    # Plot: every (length, method) point, one letter per method.
    methods = []
    for L in sorted(lengths):
        for m in lengths[L][1]["methods"]:
            if m not in methods:
                methods.append(m)
    letters = {m: "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i] for i, m in enumerate(methods)}
    if png:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print(f"(matplotlib not available: no {png}; ASCII plot below)")
            png = None
    if png:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in methods:
            pts = [(lengths[L][0]["summary"][m]["ttft_median_s"], lengths[L][0]["summary"][m]["accuracy"], L)
                   for L in sorted(lengths) if m in lengths[L][0]["summary"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=m)
            for x, y, L in pts:  # which length each point is
                ax.annotate(f"{L // 1024}K", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("TTFT, warm cache (median s)")
        ax.set_ylabel("answer accuracy")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.savefig(png, dpi=120, bbox_inches="tight")
        print(f"plot: {png}")
        return
    for L in sorted(lengths):
        jl = lengths[L][0]
        pts = [(letters[m], jl["summary"][m]["ttft_median_s"], jl["summary"][m]["accuracy"])
               for m in methods if m in jl["summary"]]
        print(f"accuracy vs TTFT, {L}-token requests (* = several methods on one spot)")
        print("```")
        print("\n".join(ascii_plot(pts)))
        print("```")
        print()
    print("legend: " + ", ".join(f"{letters[m]} = {m}" for m in methods))


if __name__ == "__main__":
    main(sys.argv[1:])
