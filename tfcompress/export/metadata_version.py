"""The minimum TFLite-metadata parser version a metadata flatbuffer needs, in Python.

MediaPipe's metadata writers stamp ``ModelMetadata.min_parser_version`` with
``GetMinimumMetadataParserVersion``, a compiled helper (``mediapipe.tasks.cc.metadata.python.
_pywrap_metadata_version``) that mediapipe 1.2.x wheels do not ship. This is the same function over
the schema's generated Python (``mediapipe.tasks.metadata.metadata_schema_py_generated``), following
``mediapipe/tasks/cc/metadata/metadata_version.cc`` rule for rule: start at 1.0.0 and take the
largest version of every schema member the buffer uses, as the schema's History lists them::

    1.0.1  AssociatedFile.type VOCABULARY
    1.1.0  ProcessUnitOptions BertTokenizerOptions / SentencePieceTokenizerOptions,
           SubGraphMetadata.input_process_units / output_process_units (present, even if empty)
    1.2.0  SubGraphMetadata.input_tensor_groups / output_tensor_groups
    1.2.1  ProcessUnitOptions RegexTokenizerOptions
    1.3.0  ContentProperties AudioProperties
    1.4.0  AssociatedFile.type SCANN_INDEX_FILE
    1.4.1  AssociatedFile.version
    1.5.0  SubGraphMetadata.custom_metadata

Like the C++ it looks at associated files of the model, of each subgraph and of each tensor, at
process units of tensors and subgraphs, and at tensor content; not inside tokenizer options (their
vocabulary files need the tokenizer's 1.1.0 anyway). Where the C++ logs and returns an empty string
for a buffer that is not metadata, this raises ``ValueError``.
"""
from __future__ import annotations

# (major, minor, patch) of each member added after 1.0.0, as metadata_version.cc's GetMemberVersion.
MEMBER_VERSIONS = {
    "AssociatedFileType.VOCABULARY": (1, 0, 1),
    "SubGraphMetadata.input_process_units": (1, 1, 0),
    "SubGraphMetadata.output_process_units": (1, 1, 0),
    "ProcessUnitOptions.BertTokenizerOptions": (1, 1, 0),
    "ProcessUnitOptions.SentencePieceTokenizerOptions": (1, 1, 0),
    "SubGraphMetadata.input_tensor_groups": (1, 2, 0),
    "SubGraphMetadata.output_tensor_groups": (1, 2, 0),
    "ProcessUnitOptions.RegexTokenizerOptions": (1, 2, 1),
    "ContentProperties.AudioProperties": (1, 3, 0),
    "AssociatedFileType.SCANN_INDEX_FILE": (1, 4, 0),
    "AssociatedFile.version": (1, 4, 1),
    "SubGraphMetadata.custom_metadata": (1, 5, 0),
}
BASE_VERSION = (1, 0, 0)
METADATA_FILE_IDENTIFIER = b"M001"


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.2"`` -> ``(1, 2, 0)``: one to three dot-separated integers, missing parts 0 (as the C++ Version)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"version {text!r}: expected one to three dot-separated integers")
    numbers = [int(part) for part in parts] + [0] * (3 - len(parts))
    return numbers[0], numbers[1], numbers[2]


def format_version(version: tuple[int, int, int]) -> str:
    return ".".join(str(number) for number in version)


def _members_used(metadata, schema) -> list[str]:
    """Names (keys of MEMBER_VERSIONS) of the post-1.0.0 members an unpacked ``ModelMetadataT`` uses."""
    used: list[str] = []

    def associated_files(files):
        for file in files or []:
            if file is None:
                continue
            if file.type == schema.AssociatedFileType.VOCABULARY:
                used.append("AssociatedFileType.VOCABULARY")
            if file.type == schema.AssociatedFileType.SCANN_INDEX_FILE:
                used.append("AssociatedFileType.SCANN_INDEX_FILE")
            if file.version is not None:
                used.append("AssociatedFile.version")

    def process_units(units):
        options = {schema.ProcessUnitOptions.BertTokenizerOptions: "BertTokenizerOptions",
                   schema.ProcessUnitOptions.SentencePieceTokenizerOptions: "SentencePieceTokenizerOptions",
                   schema.ProcessUnitOptions.RegexTokenizerOptions: "RegexTokenizerOptions"}
        for unit in units or []:
            if unit is not None and unit.optionsType in options:
                used.append(f"ProcessUnitOptions.{options[unit.optionsType]}")

    def tensors(items):
        for tensor in items or []:
            if tensor is None:
                continue
            associated_files(tensor.associatedFiles)
            process_units(tensor.processUnits)
            content = tensor.content
            if content is not None and content.contentPropertiesType == schema.ContentProperties.AudioProperties:
                used.append("ContentProperties.AudioProperties")

    for subgraph in metadata.subgraphMetadata or []:
        if subgraph is None:
            continue
        tensors(subgraph.inputTensorMetadata)
        tensors(subgraph.outputTensorMetadata)
        associated_files(subgraph.associatedFiles)
        # Present counts, even empty (the C++ tests the vector pointer); the object API keeps None apart.
        for field, member in (("inputProcessUnits", "input_process_units"),
                              ("outputProcessUnits", "output_process_units"),
                              ("inputTensorGroups", "input_tensor_groups"),
                              ("outputTensorGroups", "output_tensor_groups"),
                              ("customMetadata", "custom_metadata")):
            if getattr(subgraph, field) is not None:
                used.append(f"SubGraphMetadata.{member}")
        process_units(subgraph.inputProcessUnits)
        process_units(subgraph.outputProcessUnits)
    associated_files(metadata.associatedFiles)
    return used


def minimum_parser_version(buffer) -> str:
    """``GetMinimumMetadataParserVersion(buffer)``: e.g. ``"1.1.0"`` for a BERT text classifier's metadata.

    Args:
        buffer: a ``ModelMetadata`` flatbuffer (file identifier ``M001``), bytes or bytearray.

    Raises:
        ValueError: the buffer is not a metadata flatbuffer (wrong identifier, or it does not unpack).
    """
    # mediapipe is optional for tfcompress: its generated schema module is imported here, deferred.
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    data = bytes(buffer)
    if len(data) < 8 or data[4:8] != METADATA_FILE_IDENTIFIER:
        raise ValueError(f"not a TFLite metadata flatbuffer: file identifier {data[4:8]!r}, expected "
                         f"{METADATA_FILE_IDENTIFIER!r}")
    try:
        metadata = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAs(data, 0))
    except Exception as error:  # a corrupt buffer fails anywhere inside the generated unpacking code
        raise ValueError(f"the metadata flatbuffer does not unpack: {type(error).__name__}: {error}") from None
    version = max([BASE_VERSION] + [MEMBER_VERSIONS[member] for member in _members_used(metadata, schema)])
    return format_version(version)


def GetMinimumMetadataParserVersion(buffer) -> str:  # noqa: N802 - the compiled helper's name
    """The compiled helper's signature (bytes in, version string out), for MediaPipe's populator."""
    return minimum_parser_version(buffer)
