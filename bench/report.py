"""Report of a pytest-benchmark JSON of ``bench/``: per workload the median of each implementation,
fastaevb's speed-up over eager and over ``torch.compile`` of the same code, elements/s, and GB/s of
the least traffic of a fused step, also as a fraction of the bandwidth probe of the same run.
Prints a markdown table and writes a PNG bar chart of the ratios.

Usage: python bench/report.py bench.json [--png bench.png]
"""

from __future__ import annotations

import argparse
import json
import platform
from collections import defaultdict


def load(path: str):
    data = json.load(open(path))
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bench in data["benchmarks"]:
        groups[bench["group"]][bench["extra_info"]["implementation"]] = bench
    return data, groups


def rows(groups):
    """One row per (group, fastaevb implementation) with its ratios; training-step groups too."""
    probes = ("bandwidth probe", "CUDA bandwidth probe")  # bench/test_sgvb_loss.py, bench/test_cuda.py
    probe = next((groups[g]["copy"] for g in probes if "copy" in groups.get(g, {})), None)
    probe_gbs = probe["extra_info"]["bytes"] / probe["stats"]["median"] / 1e9 if probe else None
    out = []
    for group, impls in groups.items():
        if group in probes or "eager" not in impls:
            continue
        eager = impls["eager"]["stats"]["median"]
        compiled = impls.get("compiled", {}).get("stats", {}).get("median")
        for name, bench in sorted(impls.items()):
            if name in ("eager", "compiled"):  # the baselines; every other row is ours or a bound
                continue
            t = bench["stats"]["median"]
            info = bench["extra_info"]
            gbs = info["bytes"] / t / 1e9 if "bytes" in info else None
            out.append(
                dict(
                    group=group,
                    implementation=name,
                    eager=eager,
                    compiled=compiled,
                    ours=t,
                    vs_eager=eager / t,
                    vs_compiled=compiled / t if compiled else None,
                    per_s=(info.get("elements") or info.get("items") or 0) / t,
                    unit="items/s" if "items" in info else "elements/s",
                    gbs=gbs,
                    probe=gbs / probe_gbs if gbs and probe_gbs else None,
                )
            )
    return out, probe_gbs


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} us"


def table(out, probe_gbs, data) -> str:
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {}).get("brand_raw", platform.processor())
    threads = next((b["extra_info"]["threads"] for b in data["benchmarks"] if "threads" in b["extra_info"]), "?")
    probe = f", bandwidth probe {probe_gbs:.1f} GB/s" if probe_gbs else ""
    lines = [
        f"{data.get('datetime', '')[:10]}, {cpu}, torch {info.get('torch', '')}threads: {threads}{probe}",
        "",
        "| workload | impl | eager | compiled | fastaevb | vs eager | vs compiled | throughput | GB/s (of probe) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out:
        comp = fmt_time(r["compiled"]) if r["compiled"] else "-"
        vs_c = f"{r['vs_compiled']:.2f}x" if r["vs_compiled"] else "-"
        gb = f"{r['gbs']:.1f} ({100 * r['probe']:.0f}%)" if r["gbs"] and r["probe"] else "-"
        lines.append(
            f"| {r['group']} | {r['implementation']} | {fmt_time(r['eager'])} | {comp} | {fmt_time(r['ours'])} | "
            f"{r['vs_eager']:.2f}x | {vs_c} | {r['per_s']:.3g} {r['unit']} | {gb} |"
        )
    return "\n".join(lines)


def chart(out, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in out if r["implementation"] == "fastaevb"]
    labels = [r["group"] for r in shown]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(shown) + 1.2))
    ys = range(len(shown))
    ax.barh([y - 0.2 for y in ys], [r["vs_eager"] for r in shown], height=0.4, label="vs eager")
    ax.barh([y + 0.2 for y in ys], [r["vs_compiled"] or 0 for r in shown], height=0.4, label="vs torch.compile")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of fastaevb (median time ratio, higher is better)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="file written by pytest --benchmark-json")
    parser.add_argument("--png", default=None, help="bar chart of the ratios (default: next to the JSON)")
    args = parser.parse_args()
    data, groups = load(args.json)
    out, probe_gbs = rows(groups)
    print(table(out, probe_gbs, data))
    png = args.png or args.json.rsplit(".", 1)[0] + ".png"
    chart(out, png)
    print(f"\nchart: {png}")


if __name__ == "__main__":
    main()
