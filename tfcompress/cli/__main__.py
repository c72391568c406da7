"""``python -m tfcompress.cli``: the same as the ``tfcompress`` command."""
import sys

from tfcompress.cli.commands import main

sys.exit(main())
