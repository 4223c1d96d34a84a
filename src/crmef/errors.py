"""Exception types shared by the library and the CLI."""

from __future__ import annotations


class CrmefError(Exception):
    """Base class for errors caused by the user's input (files, configs, arguments).

    The CLI prints ``crmef: <message>`` on one line and exits with code 2 for these; any other
    exception is a bug and keeps its traceback.
    """


class InputError(CrmefError, ValueError):
    """Bad input: an unreadable file, an image of the wrong size, a bad argument value."""


class ConfigError(CrmefError, ValueError):
    """A configuration that cannot run (unknown key, bad value, missing data)."""
