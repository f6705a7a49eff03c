#!/usr/bin/env python3
"""Summary and plot of redknot-tier-bench JSON results.

    python3 tier_report.py tiers.json [more.json ...] [--png docs/tiers_ttft.png]

A later file's scenarios replace an earlier file's (e.g. scenario b rerun alone with --scenarios b).

Prints the per-tier TTFT of scenario a (medians over repeats per request, then over requests), scenario b's
TTFT by the slowest source of a request's documents and scenario c's swap times. With --png (needs
matplotlib): TTFT by tier (a: one point per request, the bar at the median, the promotion / cold-prefill part
hatched) beside TTFT by source in the cycling workload (b) and swap-in times (c)."""
import json
import statistics
import sys

# nlohmann::json writes object keys sorted: put them back in the order the tool runs them.
SOURCES = ["store", "host", "disk", "miss"]
PLACEMENTS = ["host", "disk", "disk_dropped", "split", "split_dropped", "split_dropped_prefetch"]


def modes_of(d):
    return [m for m in d["options"]["tiers"] if m in d["a"]["summary"]]


def placements_of(d):
    return [k for k in PLACEMENTS if isinstance(d["c"].get(k), dict)]


def per_request(d, mode, key):
    """Median over repeats of `key`, per request, for one mode of scenario a."""
    return [statistics.median(r[key] for r in q["runs"][mode]) for q in d["a"]["requests"] if mode in q.get("runs", {})]


def text(d):
    out = [f"{d['date']}  load {d['load_start']} -> {d.get('load_end', '?')}  spec {d['spec']}"]
    if "a" in d:
        out.append("\na. TTFT by tier (median over requests of the median over repeats)")
        for mode in modes_of(d):
            s = d["a"]["summary"][mode]
            out.append(f"  {mode:13s} TTFT {s['ttft_median_s']:6.2f} s  promotion {s['promote_median_s']:.3f} s "
                       f"(reading {s['read_wait_median_s']:.3f} s)  cold prefills {s['cold_prefill_median_s']:.2f} s  "
                       f"up {s['bytes_up_median'] / 2**20:.0f} MiB  answers differing {s['answer_mismatches']}  "
                       f"logits differing {s['logit_mismatches']}")
    if "b" in d:
        b = d["b"]
        out.append(f"\nb. cycling ({len(b['requests'])} requests, stack {b.get('stack', '?')})")
        out.append("  lookups: " + ", ".join(f"{k} {b['hits'][k]['lookups']} ({100 * b['hits'][k]['rate']:.0f}%)"
                                             for k in SOURCES))
        for k in SOURCES:
            v = b["ttft_by_worst_source"][k]
            if v["requests"]:
                out.append(f"  worst source {k:5s}: {v['requests']:2d} requests, TTFT median {v['median_s']:.2f} s, "
                           f"p90 {v['p90_s']:.2f} s")
    if "c" in d:
        out.append("\nc. preemption")
        for k in placements_of(d):
            v = d["c"][k]
            out.append(f"  {k:24s} swap-out {1e3 * v['swap_out_median_s']:7.1f} ms  swap-in "
                       f"{1e3 * v['swap_in_median_s']:7.1f} ms  {v['bytes_median'] / 2**20:.1f} MiB "
                       f"(local {v['local_bytes_median'] / 2**20:.1f}, global {v['global_bytes_median'] / 2**20:.1f})  "
                       f"token mismatches {v['token_mismatches']}/{v['sequences_compared']}")
    return "\n".join(out)


def plot(d, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in ("a", "b", "c") if p in d]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False)
    axes = axes[0]
    colors = {"primary": "#4c72b0", "host": "#55a868", "disk": "#c44e52", "disk_dropped": "#8172b2",
              "cold": "#7f7f7f", "store": "#4c72b0", "miss": "#7f7f7f"}
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
            o = d["options"]
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
            ax.set_title(f"c. preemption of a {d['options']['preempt_length']}-token sequence\n"
                         f"({mib:.0f} MiB per sequence)", fontsize=9)
            ax.legend(fontsize=8)
    fig.suptitle(f"redknot tiers, SmolLM2-135M, 2-core CPU, load {d['load_start'].split()[0]} -> "
                 f"{d.get('load_end', '?').split()[0]} ({d['date']})", fontsize=9)
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
    for p in argv[2:]:
        later = json.load(open(p))
        for k in ("a", "b", "c"):
            if k in later:
                d[k] = later[k]
                d.setdefault("runs", []).append(f"{k}: {later['date']}, load {later['load_start']} -> "
                                                f"{later.get('load_end', '?')}")
    print(text(d))
    if png:
        plot(d, png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
