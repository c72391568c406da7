"""The errors tfcompress raises for problems the user can fix: bad input files, a bad config, a model
folder that cannot be loaded, an artifact that cannot be made or read.

Every one derives from :class:`TfcompressError`, so library users can catch them together; the
``tfcompress`` command and the recipes print such an error as one line (``tfcompress: error: ...``)
and exit with code 2. Anything else is a bug in tfcompress and keeps its traceback (exit code 1).
"""
from __future__ import annotations


class TfcompressError(Exception):
    """A problem with the user's input, config, model or files (not a bug in tfcompress)."""


class ConfigError(TfcompressError, ValueError):
    """A config field or flag has a bad value; the message names the field."""


class InputError(TfcompressError, ValueError):
    """Input data is unusable as a whole (one class, labels of another file, too long for the model)."""


class ArtifactError(TfcompressError):
    """A TFLite artifact cannot be made or read (truncated file, ops the runtime lacks)."""
