#!/usr/bin/env python
"""``python recipes/custom_csv.py ARGS`` is ``tfcompress run custom_csv ARGS``: see :mod:`tfcompress.recipes.custom_csv`."""
from tfcompress.recipes.custom_csv import main

if __name__ == "__main__":
    main()
