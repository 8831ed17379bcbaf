"""Ratios of medians from a pytest-benchmark JSON: fastaevb's speed-up over eager and compiled.

Usage: python bench/report.py bench.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="file written by pytest --benchmark-json")
    args = parser.parse_args()
    medians: dict[str, dict[str, float]] = defaultdict(dict)
    for bench in json.load(open(args.json))["benchmarks"]:
        medians[bench["group"]][bench["extra_info"]["implementation"]] = bench["stats"]["median"]
    print(f"{'workload':<52} {'eager us':>9} {'compiled us':>11} {'fastaevb us':>11} {'vs eager':>9} {'vs compiled':>11}")
    for group, m in sorted(medians.items()):
        ours = m["fastaevb"]
        print(f"{group:<52} {m['eager'] * 1e6:>9.1f} {m['compiled'] * 1e6:>11.1f} {ours * 1e6:>11.1f} "
              f"{m['eager'] / ours:>8.2f}x {m['compiled'] / ours:>10.2f}x")


if __name__ == "__main__":
    main()
