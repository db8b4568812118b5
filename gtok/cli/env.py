"""`gtok env`: what to paste into a bug report."""

from __future__ import annotations

import typer
from rich.table import Table

from gtok.cli._common import JsonFlag, print_json, table_text


def env(json_output: JsonFlag = False) -> None:
    """Show versions, devices, the Taichi arch that starts (and how to fix a CUDA driver
    library Taichi cannot find), whether the kernels compile and agree with the reference on
    it; for every arch (cpu, cuda, vulkan, metal, each probed in a subprocess) whether it
    starts here and its kernels agree; and which weight files are found.

    Example: gtok env --json > env.json
    """
    from gtok.envinfo import collect  # imports torch: only when the command runs

    report = collect()
    if json_output:
        print_json(report)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key in ("gtok", "python", "platform", "cpu_count"):
        table.add_row(key, str(report[key]))
    for name, version in report["packages"].items():
        table.add_row(name, version or "[red]not installed[/]")
    table.add_row("torch devices", ", ".join(report["torch_devices"]))
    taichi = report["taichi"]
    arch = taichi["arch"] or f"[red]did not start[/] ({taichi.get('error')})"
    table.add_row("taichi arch", arch)
    if taichi["libcuda_problem"]:
        table.add_row("libcuda", f"[red]{taichi['libcuda_problem']}[/]")
    kernels = taichi["kernels"]
    table.add_row("taichi kernels", kernels if kernels == "ok" else f"[red]{kernels}[/]")
    table.add_row("kernel arch asked", taichi["requested_arch"])
    for arch, found in taichi["arches"].items():
        table.add_row(f"arch {arch}", _arch_line(found))
    table.add_row("kernel cache", taichi["cache_dir"])
    for key, weight in report["weights"].items():
        where = weight["found"] or f"[yellow]not found[/] ({weight['file']})"
        table.add_row(f"weights: {key}", where)
    typer.echo(table_text(table))  # a result: on stdout, laid out as on the terminal


def _arch_line(found: dict) -> str:
    """One arch of `gtok env`: whether it starts and its kernels agree, or why not."""
    if not found["starts"]:
        return f"[yellow]does not start[/] ({found['error']})"
    kernels = found["kernels"]
    return "starts, kernels ok" if kernels == "ok" else f"starts, [red]kernels {kernels}[/]"
