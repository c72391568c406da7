"""Task data: readers (TSV/CSV/JSONL, CoNLL) -> ``encode`` -> length-bucketed batches; augmentation."""
from tfcompress.data.encoding import EncodedData, concatenate, encode  # noqa: F401
from tfcompress.data.readers import (  # noqa: F401
    DataError,
    TextClassificationExamples,
    TokenClassificationExamples,
    iob1_to_iob2,
    read_conll,
    read_text_classification,
)
