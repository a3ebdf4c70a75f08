"""``python -m sda_cli``: the same as the ``sda`` command."""

from sda_cli.cli import main

main()
