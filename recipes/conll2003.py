#!/usr/bin/env python
"""``python recipes/conll2003.py ARGS`` is ``tfcompress run conll2003 ARGS``: see :mod:`tfcompress.recipes.conll2003`."""
from tfcompress.recipes.conll2003 import main

if __name__ == "__main__":
    main()
