"""Turn a pytest-benchmark JSON file into the markdown tables of benchmarks/results/.

    python benchmarks/report.py RESULTS.json --title "CPU" --command "python -m pytest ..." > benchmarks/results/cpu.md

Writes the machine (``lscpu | head`` or ``nvidia-smi -L``), the torch version, the command, a
median table per group with each implementation's ratio to the baseline (``eager``, or
``linalg_inv`` for the small inverses), and the recorded relative errors.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from collections import defaultdict

import torch

BASELINES = ("eager", "linalg_inv")


def machine_description(device: str) -> str:
    commands = [["lscpu"]] + ([["nvidia-smi", "-L"]] if device.startswith("cuda") else [])
    lines = []
    for command in commands:
        try:
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            out = f"({' '.join(command)} failed: {exc})"
        lines += out.splitlines()[: 12 if command == ["lscpu"] else None]
    return "\n".join(lines)


def implementation(bench: dict) -> str:
    params = bench.get("params") or {}
    return str(params.get("impl", bench["name"]))


def format_seconds(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def size_key(group: str) -> tuple:
    op, _, size = group.partition(" ")
    numbers = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in size.split()]
    return op, len(numbers), numbers


def render(data: dict, title: str, command: str, device: str) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"] or bench["name"]].append(bench)
    out = [f"# gdla benchmarks: {title}", ""]
    out += ["Command:", "", "```", command, "```", ""]
    out += [f"torch {torch.__version__}, Python {platform.python_version()}, run {data.get('datetime', '?')}", ""]
    out += ["Machine:", "", "```", machine_description(device), "```", ""]
    out += ["## Medians", "", "| group | implementation | median | ratio to baseline | rounds | relative errors |"]
    out += ["| --- | --- | --- | --- | --- | --- |"]
    ratios = []
    for group in sorted(groups, key=size_key):
        benches = sorted(groups[group], key=lambda b: (implementation(b) not in BASELINES, implementation(b)))
        base = next((b for b in benches if implementation(b) in BASELINES), None)
        for bench in benches:
            median = bench["stats"]["median"]
            ratio = median / base["stats"]["median"] if base is not None else float("nan")
            errors = ", ".join(
                f"{key.removeprefix('rel_err_')}: {value:.1e}" if isinstance(value, float) else f"{key}: {value}"
                for key, value in sorted(bench.get("extra_info", {}).items())
            )
            out.append(
                f"| {group} | {implementation(bench)} | {format_seconds(median)} | {ratio:.3f} "
                f"| {bench['stats']['rounds']} | {errors} |"
            )
            if base is not None and bench is not base:
                ratios.append((group, implementation(bench), ratio))
    out += ["", "## Ratios (median / baseline median; < 1 means faster than the baseline)", ""]
    out += ["| group | implementation | ratio |", "| --- | --- | --- |"]
    out += [f"| {group} | {impl} | {ratio:.3f} |" for group, impl, ratio in ratios]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="the file written by --benchmark-json")
    parser.add_argument("--title", default="CPU")
    parser.add_argument("--command", default="python -m pytest benchmarks --benchmark-only")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with open(args.results, encoding="utf-8") as handle:
        data = json.load(handle)
    print(render(data, args.title, args.command, args.device), end="")


if __name__ == "__main__":
    main()
