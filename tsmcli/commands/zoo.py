"""``tsm zoo list`` and ``tsm zoo download``: the published checkpoints by name."""

from __future__ import annotations

import click


@click.group()
def zoo() -> None:
    """Published TSM checkpoints by name: list them, download one (into $TSM_HOME)."""


@zoo.command("list")
def zoo_list() -> None:
    """Print every published checkpoint with its protocol and published top-1 (ImageNet
    backbones, for model.pretrained, say "backbone" in place of a protocol)."""
    from tsmcli.zoo import list_entries
    from tsmcli.zoo_cache import is_cached

    rows = [("name", "dataset", "frames", "protocol", "top-1", "downloaded")]
    for entry in list_entries():
        result = entry.published
        protocol = (
            "backbone" if entry.is_backbone else "-" if result is None else str(result.protocol)
        )
        rows.append(
            (
                entry.name,
                entry.dataset,
                "-" if entry.segments is None else str(entry.segments),
                protocol,
                "-" if result is None else f"{result.top1:g}",
                "yes" if is_cached(entry) else "no",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@zoo.command("download")
@click.argument("name")
def zoo_download(name) -> None:
    """Download NAME (verified against its hash) and print the path of the file."""
    from tsmcli.zoo_cache import download_checkpoint

    click.echo(str(download_checkpoint(name)))
