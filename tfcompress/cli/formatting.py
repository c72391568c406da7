"""Help formatting shared by the subcommands."""
from __future__ import annotations

import argparse


class FORMATTER(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to flags whose help does not state its default already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return super()._get_help_string(action)
