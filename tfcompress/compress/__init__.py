"""Compression techniques, each with the same verbs: ``apply(model, config)``, ``strip(model)``, ``hooks``.

- :mod:`~tfcompress.compress.prune`: TFMOT magnitude pruning on the nested Dense layers (and embeddings).
- :mod:`~tfcompress.compress.qat`: TFMOT quantization-aware training wrappers.
- :mod:`~tfcompress.compress.distill`: the Distiller (teacher -> student), its losses and teacher cache.
"""
from tfcompress.compress import distill, prune, qat  # noqa: F401
