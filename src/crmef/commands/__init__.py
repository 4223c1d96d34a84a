"""CLI sub-commands.

Every module in this package defines ``register(subparsers)`` and is listed, with its one-line
help, in :data:`crmef.cli.COMMANDS`; the CLI imports a command's module only when that command
runs (or its ``--help`` is asked). ``register`` adds one sub-command whose ``func`` attribute (set
with ``parser.set_defaults(func=...)``) receives the parsed ``argparse.Namespace`` and returns an
exit code. Importing a command module must stay cheap: nothing heavy (torch, torchvision, numpy,
OpenCV, matplotlib, …) at module level or in ``register``; ``run`` imports what it needs.
``tests/test_cli_lazy.py`` checks this.
"""
