"""The ``tfcompress`` command."""
from tfcompress.cli.commands import main  # noqa: F401
