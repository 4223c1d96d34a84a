"""CLI sub-commands.

Every module in this package that defines ``register(subparsers)`` is discovered by
:mod:`crmef.cli`; ``register`` adds one sub-command whose ``func`` attribute (set with
``parser.set_defaults(func=...)``) receives the parsed ``argparse.Namespace`` and returns an exit
code. Keeping one module per command lets commands be developed independently.
"""
