#!/usr/bin/env python3
"""Summary and plot of redknot-tier-bench JSON results.

    python3 tier_report.py tiers.json [more.json ...] [--png docs/tiers_ttft.png]

A later file's scenarios replace an earlier file's (e.g. scenario b rerun alone with --scenarios b).

Prints markdown tables: the per-tier TTFT of scenario a (medians over repeats per request, then over
requests), scenario b's hit rates and TTFT by the slowest source of a request's documents, scenario c's swap
times, and scenario f's fault table (the remote tier: faults injected while requests read their documents
from a Redis Cluster). With --png (needs matplotlib): TTFT by tier (a: one point per request, the bar at the
median, the promotion / cold-prefill part hatched; `remote` where the run had --remote) beside TTFT by source
in the cycling workload (b), swap-in times (c) and the TTFT of each fault's request (f)."""
import json
import statistics
import sys

# nlohmann::json writes object keys sorted: put them back in the order the tool runs them.
SOURCES = ["store", "host", "disk", "miss"]
PLACEMENTS = ["host", "disk", "disk_dropped", "split", "split_dropped", "split_dropped_prefetch"]


def modes_of(d):
    return [m for m in d.get("a_options", d["options"])["tiers"] if m in d["a"]["summary"]]


def placements_of(d):
    return [k for k in PLACEMENTS if isinstance(d["c"].get(k), dict)]


def per_request(d, mode, key):
    """Median over repeats of `key`, per request, for one mode of scenario a."""
    return [statistics.median(r[key] for r in q["runs"][mode]) for q in d["a"]["requests"] if mode in q.get("runs", {})]


def text(d):
    """Markdown tables of every scenario present."""
    mib = lambda b: b / 2**20
    out = [f"Runs: {'; '.join(d.get('runs', [])) or d['date'] + ', load ' + d['load_start'] + ' -> ' + str(d.get('load_end'))}"
           f"; spec {d['spec']}"]
    if "a" in d:
        o = d.get("a_options", d["options"])
        out += ["", f"**a. TTFT by tier** ({len(d['a']['requests'])} requests of {o['length']} tokens, "
                f"{o['repeats']} repeats each; per tier the median over requests of each request's median)", "",
                "| documents in | TTFT median | TTFT min-max | promotion | of which reading | cold prefills "
                "| moved up per request | moved up / dense payload | answers differing from primary "
                "| logits differing from primary |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        n, reps = len(d["a"]["requests"]), o["repeats"]
        for mode in modes_of(d):
            s = d["a"]["summary"][mode]
            ans = "reference" if mode == "primary" else f"{s['answer_mismatches']} / {n}"
            # Older JSON (before --remote) has no dense yardstick.
            ratio = f"{s['bytes_up_over_dense_median']:.3f}" if "bytes_up_over_dense_median" in s else "-"
            out.append(f"| {mode} | {s['ttft_median_s']:.2f} s | {s['ttft_min_s']:.2f}-{s['ttft_max_s']:.2f} s "
                       f"| {s['promote_median_s']:.3f} s | {s['read_wait_median_s']:.3f} s "
                       f"| {s['cold_prefill_median_s']:.2f} s | {mib(s['bytes_up_median']):.0f} MiB | {ratio} | {ans} "
                       f"| {s['logit_mismatches']} / {n * reps} |")
        out += ["", "| documents in | system | splice | select (layer-1 K/V, deviation) | recompute | question |",
                "|---|---|---|---|---|---|"]
        for mode in modes_of(d):
            s = d["a"]["summary"][mode]
            out.append(f"| {mode} | {s['system_median_s']:.2f} s | {s['splice_median_s']:.3f} s "
                       f"| {s['select_median_s']:.2f} s | {s['recompute_median_s']:.2f} s | {s['question_median_s']:.2f} s |")
        dense = [q["dense_bytes"] for q in d["a"]["requests"] if "dense_bytes" in q]
        if dense:
            out += ["", f"Dense payload of a request's documents (fp32 K+V rows of every head and position, median over {len(dense)} requests): "
                    f"{mib(statistics.median(dense)):.1f} MiB."]
    if "f" in d:
        f = d["f"]
        o = d.get("f_options", d["options"])
        out += ["", f"**f. Faults on the remote tier** ({len(f['runs'])} requests of {o['length']} tokens, documents "
                "demoted into the RedisTier, one fault each; reference: the same request from the store)", "",
                "| fault | injected | documents | from Redis | prefilled again | rejected (corrupt) | lookups | TTFT "
                "| answer differs | logits differ | replica took over after | all 6 nodes ok after |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        secs = lambda x: f"{x:.2f} s" if x is not None and x >= 0 else "-"
        for r in f["runs"]:
            out.append(f"| {r['fault']} | {'yes' if r['injected'] else 'NO'} | {r['documents']} | {r['from_remote']} "
                       f"| {r['prefilled_again']} | {r['rejected']} | {secs(r.get('lookup_s'))} | {r['ttft_s']:.2f} s "
                       f"| {'no' if r['answer_same'] else 'YES'} | {'no' if r['logits_same'] else 'YES'} "
                       f"| {secs(r.get('failover_s'))} | {secs(r['recover_s'])} |")
        out += ["", f"Faults injected: {f['faults_injected']}; requests served: {f['requests_served']}; answers "
                f"differing from the fault-free run: {f['answers_differing']}; first-token logits differing: "
                f"{f['logits_differing']}."]
    if "b" in d:
        b = d["b"]
        out += ["", f"**b. Cycling workload** ({len(b['requests'])} requests; KV of all documents "
                f"{mib(b['documents_bytes']):.0f} MiB; pool {mib(b['pool_bytes']):.0f} MiB of which one request's "
                f"room {mib(b['request_room_bytes']):.0f} MiB; HostTier {mib(b['host']['capacity_bytes']):.0f} MiB; "
                f"DiskTier unbounded; stack {b.get('stack', '?')})", "",
                "| documents found in | lookups | share |", "|---|---|---|"]
        for k in SOURCES:
            out.append(f"| {k} | {b['hits'][k]['lookups']} | {100 * b['hits'][k]['rate']:.0f}% |")
        out += ["", "| slowest source of a request's documents | requests | TTFT median | TTFT p90 | TTFT min-max |",
                "|---|---|---|---|---|"]
        for k in SOURCES:
            v = b["ttft_by_worst_source"][k]
            if v["requests"]:
                out.append(f"| {k} | {v['requests']} | {v['median_s']:.2f} s | {v['p90_s']:.2f} s "
                           f"| {v['min_s']:.2f}-{v['max_s']:.2f} s |")
        c, h, k = b["chunks"], b["host"], b["disk"]
        out += ["", f"Moved down {mib(c['bytes_down']):.0f} MiB ({c['demotions']} demotions, {c['dropped']} dropped "
                f"without a copy), up {mib(c['bytes_up']):.0f} MiB ({c['promotions']} promotions, "
                f"{c['promote_failures']} failed, {c['rejected']} rejected); HostTier: {h['evictions']} evictions "
                f"({mib(h['evicted_bytes']):.0f} MiB), {h.get('spilled', 0)} of them spilled to the DiskTier; "
                f"DiskTier: {k['evictions']} evictions, {mib(k['bytes_held']):.0f} MiB held at the end; chunks the "
                f"store dropped itself: {b['store_evictions']}. Accuracy {b['accuracy']:.2f}."]
    if "c" in d:
        o = d.get("c_options", d["options"])
        out += ["", f"**c. Preemption** ({o['preempt']} sequences of {o['preempt_length']} prompt tokens, "
                f"{o['preempt_new']} new tokens each, {o['repeats']} repeats)", "",
                "| placement | swap-out median | swap-in median | of which waiting on reads | bytes per sequence "
                "| local heads' | global heads' | token mismatches | logit mismatches |",
                "|---|---|---|---|---|---|---|---|---|"]
        for k in placements_of(d):
            v = d["c"][k]
            out.append(f"| {k} | {1e3 * v['swap_out_median_s']:.1f} ms | {1e3 * v['swap_in_median_s']:.1f} ms "
                       f"| {1e3 * v['swap_in_wait_median_s']:.1f} ms | {mib(v['bytes_median']):.1f} MiB "
                       f"| {mib(v['local_bytes_median']):.1f} MiB | {mib(v['global_bytes_median']):.1f} MiB "
                       f"| {v['token_mismatches']} / {v['sequences_compared']} "
                       f"| {v['logit_mismatches']} / {v['sequences_compared']} |")
    return "\n".join(out)


def plot(d, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("a", "b", "c", "f") if p in d]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    axes = axes[0]
    colors = {"primary": "#4c72b0", "host": "#55a868", "disk": "#c44e52", "disk_dropped": "#8172b2",
              "cold": "#7f7f7f", "store": "#4c72b0", "miss": "#7f7f7f", "remote": "#dd8452"}
    for ax, p in zip(axes, panels):
        if p == "a":
            modes = modes_of(d)
            for i, m in enumerate(modes):
                ttft = per_request(d, m, "ttft_s")
                extra = [a + b for a, b in zip(per_request(d, m, "promote_s"), per_request(d, m, "cold_prefill_s"))]
                med = statistics.median(ttft)
                ax.bar(i, med, color=colors.get(m, "#999999"), alpha=0.55, width=0.7)
                if statistics.median(extra) > 0:
                    ax.bar(i, statistics.median(extra), bottom=med - statistics.median(extra), fill=False,
                           hatch="//", edgecolor="black", width=0.7, linewidth=0)
                ax.scatter([i] * len(ttft), ttft, color="black", s=10, zorder=3)
                ax.text(i, med, f"{med:.2f}", ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(len(modes)))
            ax.set_xticklabels(modes, rotation=20)
            ax.set_ylabel("TTFT (s)")
            o = d.get("a_options", d["options"])
            ax.set_title(f"a. documents placed in one tier\n{o['requests']} requests x {o['repeats']} repeats, "
                         f"{o['length']} tokens", fontsize=9)
            ax.set_ylim(bottom=0)
        elif p == "b":
            by = d["b"]["ttft_by_worst_source"]
            srcs = [s for s in SOURCES if by[s]["requests"]]
            data = [[q["ttft_s"] for q in d["b"]["requests"] if q["worst"] == s] for s in srcs]
            ax.boxplot(data, widths=0.6)
            for i, v in enumerate(data):
                ax.scatter([i + 1] * len(v), v, color=colors.get(srcs[i], "#999999"), s=12, zorder=3)
            ax.set_xticks(range(1, len(srcs) + 1))
            ax.set_xticklabels([f"{s}\n(n={by[s]['requests']})" for s in srcs])
            ax.set_ylabel("TTFT (s)")
            ax.set_title("b. cycling workload, pool = 1/3 of the documents\nby the slowest source of a request's "
                         "documents", fontsize=9)
            ax.set_ylim(bottom=0)
        elif p == "f":
            runs = d["f"]["runs"]
            x = range(len(runs))
            ttft = [r["ttft_s"] for r in runs]
            cold = [r["cold_prefill_s"] for r in runs]
            ax.bar(list(x), ttft, color="#dd8452", alpha=0.55, width=0.7)
            ax.bar(list(x), cold, bottom=[t - c for t, c in zip(ttft, cold)], fill=False, hatch="//",
                   edgecolor="black", width=0.7, linewidth=0)
            # Below the prefills: the lookups (reads from Redis, or waiting on it until the client gives up).
            look = [r.get("lookup_s", 0) for r in runs]
            ax.bar(list(x), look, bottom=[t - c - k for t, c, k in zip(ttft, cold, look)], fill=False, hatch="..",
                   edgecolor="#555555", width=0.7, linewidth=0)
            for i, r in enumerate(runs):
                ok = r["answer_same"] and r["logits_same"]
                ax.text(i, ttft[i], f"{r['prefilled_again']} miss\n{'same' if ok else 'DIFFERS'}", ha="center",
                        va="bottom", fontsize=7)
            ax.set_xticks(list(x))
            ax.set_xticklabels([r["fault"] for r in runs], rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("TTFT (s)")
            ax.set_title("f. faults on the remote tier (Redis Cluster)\n//: documents prefilled again, ..: lookups",
                         fontsize=9)
            ax.set_ylim(bottom=0, top=max(ttft) * 1.2 if ttft else 1)
        else:
            names = placements_of(d)
            outs = [1e3 * d["c"][k]["swap_out_median_s"] for k in names]
            ins = [1e3 * d["c"][k]["swap_in_median_s"] for k in names]
            x = range(len(names))
            ax.bar([i - 0.2 for i in x], outs, width=0.4, label="swap-out", color="#4c72b0")
            ax.bar([i + 0.2 for i in x], ins, width=0.4, label="swap-in", color="#dd8452")
            ax.set_xticks(list(x))
            ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("ms (median)")
            mib = statistics.median(d["c"][k]["bytes_median"] for k in names) / 2**20
            ax.set_title(f"c. preemption of a {d.get('c_options', d['options'])['preempt_length']}-token sequence\n"
                         f"({mib:.0f} MiB per sequence)", fontsize=9)
            ax.legend(fontsize=8)
    fig.suptitle(f"redknot tiers on SmolLM2-135M, 2-core shared CPU (loaded: see docs/tiers.md), {d['date'][:10]}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) >= 2 else 1
    png = None
    if "--png" in argv:
        i = argv.index("--png")
        if i + 1 >= len(argv):
            print("--png needs a file name", file=sys.stderr)
            return 1
        png = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    d = json.load(open(argv[1]))
    run_of = lambda f: f"{f['date']}, load {f['load_start']} -> {f.get('load_end', '?')}"
    src = {k: run_of(d) for k in ("a", "b", "c", "f") if k in d}
    for p in argv[2:]:
        later = json.load(open(p))
        for k in ("a", "b", "c", "f"):
            if k in later:
                d[k] = later[k]
                d[k + "_options"] = later["options"]
                src[k] = run_of(later)
    d["runs"] = [f"{k}: {v}" for k, v in sorted(src.items())]
    print(text(d))
    if png:
        plot(d, png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
