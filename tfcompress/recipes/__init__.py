"""Packaged recipes: ``tfcompress run NAME`` (sst2, conll2003, custom_csv)."""
