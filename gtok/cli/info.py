"""`gtok info`: what a token store holds."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from gtok.cli._arguments import StoreArgument
from gtok.cli._common import JsonFlag, human_bytes, print_json, table_text


def info(
    store: StoreArgument,
    usage: Annotated[bool, typer.Option(help="Read every token to summarize code usage.")] = True,
    json_output: JsonFlag = False,
) -> None:
    """Show rows, model, preprocessing, sizes on disk, code usage and skipped samples.

    Example: gtok info tokens.zarr

    Example: gtok info tokens.zarr --json | jq .code_usage
    """
    from gtok.store.info import store_info

    report = store_info(store, usage=usage)
    if json_output:
        print_json(report)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    model = report["model"]
    table.add_row("store", f"{report['store']} ({report['state']})")
    table.add_row(
        "model",
        f"{model['preset']} ({model['kind']}, {model['image_size']} px, {model['num_tokens']} "
        f"tokens, {model['codebook_size']} codes), weights sha256 {model['weights_sha256'][:16]}",
    )
    table.add_row("preprocessing", report["preprocessing"]["method"])
    if report["state"] != "complete":
        table.add_row("progress", f"{report['shards_done']} of {report['input_shards']} shards")
        table.add_row("next", report["next_step"])
        typer.echo(table_text(table))
        return
    counts = report["counts"]
    table.add_row("rows", f"{report['rows']:,} from {counts['shards']} shards")
    table.add_row(
        "samples",
        f"{counts['samples']:,} read = {counts['encoded']:,} encoded + {counts['skipped']:,} "
        f"skipped; {counts['labeled']:,} labeled; {counts['upscaled']:,} upscaled; "
        f"{counts['damaged_shards']} damaged tars",
    )
    for name, meta in report["arrays"].items():
        size = report["sizes"].get("arrays", {}).get(name)
        on_disk = f", {human_bytes(size['bytes'])} in {size['files']} files" if size else ""
        table.add_row(f"  {name}", f"{meta['shape']} {meta['dtype']}{on_disk}")
    sizes = report["sizes"]
    per_image = report["bytes_per_image"]
    table.add_row(
        "on disk",
        f"{human_bytes(sizes['total_bytes'])} in {sizes['files']} files"
        + (
            f"; {per_image:.0f} B/image vs {report['raw_token_bytes_per_image']} B raw"
            if per_image
            else ""
        ),
    )
    if (codes := report.get("code_usage")) and codes["tokens"]:
        top = ", ".join(f"{t['code']} ({t['share']:.1%})" for t in codes["top"])
        table.add_row(
            "code usage",
            f"{codes['used']}/{codes['codebook_size']} codes used ({codes['usage']:.1%}), "
            f"perplexity {codes['perplexity']:.1f}; most frequent: {top}",
        )
    for reason, count in report["skipped_reasons"].items():
        table.add_row("  skipped", f"{count} x {reason}")
    typer.echo(table_text(table))
