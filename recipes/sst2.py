#!/usr/bin/env python
"""``python recipes/sst2.py ARGS`` is ``tfcompress run sst2 ARGS``: see :mod:`tfcompress.recipes.sst2`."""
from tfcompress.recipes.sst2 import main

if __name__ == "__main__":
    main()
