"""`gtok verify`: does every row hold a token, and is every source sample in the store,
encoded or skipped with a reason?"""

from __future__ import annotations

from typing import Annotated

import typer

from gtok.cli._arguments import StoreArgument
from gtok.cli._columns import ImageColumnOption, KeyColumnOption
from gtok.cli._common import JsonFlag, print_json
from gtok.console import console


def verify(
    store: StoreArgument,
    against: Annotated[
        list[str],
        typer.Option(
            "--against",
            help="The source shards (folders of shards or images, .tar or .parquet files, "
            "globs); repeat for several.",
            show_default=False,
        ),
    ],
    image_column: ImageColumnOption = None,
    key_column: KeyColumnOption = None,
    json_output: JsonFlag = False,
) -> None:
    """Check every row's tokens and the store against its source shards sample by sample;
    exit 1 when they disagree.

    Example: gtok verify tokens.zarr --against ./shards

    Example: gtok verify tokens.zarr --against 'data/train-{000000..000099}.tar' --json

    Example (Parquet inputs encoded with --key-column id): gtok verify tokens.zarr
    --against 'data/*.parquet' --key-column id
    """
    from gtok.data.parquetio import Columns
    from gtok.store.verify import verify_store

    report = verify_store(store, against, Columns(image=image_column, key=key_column))
    if json_output:
        print_json(report.to_dict())
    else:
        verdict = "ok" if report.ok else f"{report.problem_count} problems"
        typer.echo(
            f"{report.store}: {verdict}; {report.shards_checked} shards, "
            f"{report.source_samples} source samples = {report.rows} rows + "
            f"{report.skipped} skipped"
            + (
                f"; {report.stats_checked} shards match img2dataset's stats"
                if report.stats_checked
                else ""
            )
            + (
                f"; {report.fingerprints_missing} shards have no recorded fingerprint (an "
                "older gtok wrote them), so their files were compared by sample keys only"
                if report.fingerprints_missing
                else ""
            )
        )
        for problem in report.problems:
            console.print(f"[red]-[/] {problem}", soft_wrap=True)
        if report.problem_count > len(report.problems):
            console.print(f"... and {report.problem_count - len(report.problems)} more")
    if not report.ok:
        raise typer.Exit(1)
