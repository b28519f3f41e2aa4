"""The `metal` command."""

import click

from metal.host.cli.bench import bench
from metal.host.cli.bridge import bridge
from metal.host.cli.console import console
from metal.host.cli.flash import flash_command
from metal.host.cli.ops import events, power, status
from metal.host.cli.up import up
from metal.host.cli.sim import sim


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="metal")
def cli() -> None:
    """metal: open hardware management for a MicroPython controller board and its host."""


cli.add_command(up)
cli.add_command(bridge)
cli.add_command(status)
cli.add_command(power)
cli.add_command(events)
cli.add_command(bench)
cli.add_command(sim)
cli.add_command(console)
cli.add_command(flash_command)
