"""The `metal` command."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="metal")
def cli() -> None:
    """metal: open hardware management for a MicroPython controller board and its host."""


@cli.group()
def bench() -> None:
    """Benchmarks; each prints one JSON object."""
