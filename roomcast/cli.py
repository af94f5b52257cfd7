"""The ``roomcast`` command: ``roomcast serve APP`` (the gateway) and ``roomcast worker``.

Each subcommand is imported only when it runs, so ``roomcast worker`` never loads the gateway
and ``roomcast serve`` loads no layer: the two parts stay independent of each other.
"""

from __future__ import annotations

import importlib

import click

from roomcast import __version__

#: subcommand → (module, click command), imported on first use.
SUBCOMMANDS = {
    "serve": ("roomcast.gateway.cli", "main"),
    "worker": ("roomcast.consumers.worker", "main"),
}


class _Subcommands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        module, attribute = SUBCOMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


@click.group(cls=_Subcommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="roomcast")
def main() -> None:
    """roomcast: the ASGI gateway and the channel-layer worker.

    \b
      roomcast serve myproject.asgi:application        # Daphne's job: HTTP, WebSocket, HTTP/2
      roomcast worker myproject.asgi:application jobs  # Channels' runworker
    """
