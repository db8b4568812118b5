"""How long `gtok --help`, `gtok --version` and `gtok CMD --help` take to start.

Prints one JSON document: for each command line, the wall time of a fresh `python -c
"from gtok.cli.main import main; main()" ARGS` process in seconds (median and minimum of
`--repeats` runs), its CPU time (user + system, median: what it takes on an idle core,
which wall time on a loaded machine is not), and the heavy packages (torch, taichi, zarr)
it imported (none expected: they are imported when a command runs).

Usage: .venv/bin/python bench/startup.py [--repeats 5] > out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

LINES = (["--help"], ["--version"], ["encode", "--help"], ["train", "--help"], ["eval", "--help"])
HEAVY = ("torch", "taichi", "zarr")
_RUN = (
    "import sys\nfrom gtok.cli.main import main\nsys.argv = ['gtok', *sys.argv[1:]]\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    f"print('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_line(args: list[str], repeats: int) -> dict:
    """Wall seconds (median, min) and CPU seconds (median) over `repeats` fresh processes of
    `gtok ARGS`, and the heavy packages the last one imported."""
    seconds, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), _children_cpu()
        done = subprocess.run(
            [sys.executable, "-c", _RUN, *args], capture_output=True, text=True, check=True
        )
        seconds.append(time.perf_counter() - start)
        cpu.append(_children_cpu() - cpu_start)
    heavy = [name for name in done.stderr.rsplit("heavy:", 1)[1].strip().split(",") if name]
    return {
        "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3),
        "cpu_median_s": round(statistics.median(cpu), 3),
        "heavy_imports": heavy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="processes per command line")
    args = parser.parse_args()
    report = {"gtok " + " ".join(line): time_line(line, args.repeats) for line in LINES}
    print(json.dumps({"repeats": args.repeats, "startup": report}, indent=2))


if __name__ == "__main__":
    main()
