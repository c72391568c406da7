"""The Python GetMinimumMetadataParserVersion against the metadata schema's versioning rules.

Each case mirrors one of MediaPipe's ``metadata_version_test.cc`` cases: a metadata flatbuffer that uses
one member added after schema 1.0.0 needs the version that member was added in; the largest wins.
"""
from __future__ import annotations

import collections
import re
from pathlib import Path

import pytest

from conftest import import_mediapipe

import_mediapipe()
import flatbuffers  # noqa: E402
from mediapipe.tasks.metadata import metadata_schema_py_generated as schema  # noqa: E402

from tfcompress.export import metadata_version  # noqa: E402


def _buffer(metadata) -> bytes:
    builder = flatbuffers.Builder(0)
    builder.Finish(metadata.Pack(builder), metadata_version.METADATA_FILE_IDENTIFIER)
    return bytes(builder.Output())


def _file(file_type=schema.AssociatedFileType.DESCRIPTIONS, version=None):
    file = schema.AssociatedFileT()
    file.name, file.type, file.version = "file.txt", file_type, version
    return file


def _unit(options_type, options):
    unit = schema.ProcessUnitT()
    unit.optionsType, unit.options = options_type, options
    return unit


def _tensor(files=None, units=None, content=None):
    tensor = schema.TensorMetadataT()
    tensor.name, tensor.associatedFiles, tensor.processUnits, tensor.content = "tensor", files, units, content
    return tensor


def _metadata(model_files=None, **subgraph_fields):
    metadata = schema.ModelMetadataT()
    metadata.name, metadata.associatedFiles = "Foo", model_files
    if subgraph_fields:
        subgraph = schema.SubGraphMetadataT()
        for field, value in subgraph_fields.items():
            setattr(subgraph, field, value)
        metadata.subgraphMetadata = [subgraph]
    return metadata


def _audio_content():
    content = schema.ContentT()
    content.contentPropertiesType = schema.ContentProperties.AudioProperties
    content.contentProperties = schema.AudioPropertiesT()
    return content


Options = schema.ProcessUnitOptions
VOCABULARY = schema.AssociatedFileType.VOCABULARY
CASES = {
    "name only": (_metadata(), "1.0.0"),
    "vocabulary file of the model": (_metadata(model_files=[_file(VOCABULARY)]), "1.0.1"),
    "vocabulary file of a subgraph": (_metadata(associatedFiles=[_file(VOCABULARY)]), "1.0.1"),
    "vocabulary file of an input tensor": (_metadata(inputTensorMetadata=[_tensor(files=[_file(VOCABULARY)])]), "1.0.1"),
    "vocabulary file of an output tensor": (_metadata(outputTensorMetadata=[_tensor(files=[_file(VOCABULARY)])]),
                                            "1.0.1"),
    "other file types": (_metadata(model_files=[_file(schema.AssociatedFileType.TENSOR_AXIS_LABELS)]), "1.0.0"),
    "input process units": (_metadata(inputProcessUnits=[_unit(Options.NormalizationOptions,
                                                              schema.NormalizationOptionsT())]), "1.1.0"),
    "output process units": (_metadata(outputProcessUnits=[_unit(Options.NormalizationOptions,
                                                                schema.NormalizationOptionsT())]), "1.1.0"),
    "empty input process units (present counts)": (_metadata(inputProcessUnits=[]), "1.1.0"),
    "tensor process unit without a new option": (_metadata(inputTensorMetadata=[_tensor(units=[_unit(
        Options.NormalizationOptions, schema.NormalizationOptionsT())])]), "1.0.0"),
    "BertTokenizerOptions": (_metadata(inputTensorMetadata=[_tensor(units=[_unit(
        Options.BertTokenizerOptions, schema.BertTokenizerOptionsT())])]), "1.1.0"),
    "SentencePieceTokenizerOptions": (_metadata(inputTensorMetadata=[_tensor(units=[_unit(
        Options.SentencePieceTokenizerOptions, schema.SentencePieceTokenizerOptionsT())])]), "1.1.0"),
    "input tensor groups": (_metadata(inputTensorGroups=[schema.TensorGroupT()]), "1.2.0"),
    "output tensor groups": (_metadata(outputTensorGroups=[schema.TensorGroupT()]), "1.2.0"),
    "RegexTokenizerOptions": (_metadata(inputProcessUnits=[_unit(Options.RegexTokenizerOptions,
                                                                schema.RegexTokenizerOptionsT())]), "1.2.1"),
    "AudioProperties": (_metadata(inputTensorMetadata=[_tensor(content=_audio_content())]), "1.3.0"),
    "SCANN_INDEX_FILE": (_metadata(model_files=[_file(schema.AssociatedFileType.SCANN_INDEX_FILE)]), "1.4.0"),
    "AssociatedFile.version": (_metadata(outputTensorMetadata=[_tensor(files=[_file(version="v2")])]), "1.4.1"),
    "custom metadata": (_metadata(customMetadata=[schema.CustomMetadataT()]), "1.5.0"),
    "the largest member wins": (_metadata(model_files=[_file(VOCABULARY)], outputTensorGroups=[schema.TensorGroupT()],
                                          inputProcessUnits=[_unit(Options.RegexTokenizerOptions,
                                                                   schema.RegexTokenizerOptionsT())]), "1.2.1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_minimum_parser_version_is_the_newest_member_used(case):
    metadata, expected = CASES[case]
    assert metadata_version.minimum_parser_version(_buffer(metadata)) == expected
    assert metadata_version.GetMinimumMetadataParserVersion(bytearray(_buffer(metadata))) == expected


def test_every_member_of_the_schema_history_has_its_version():
    """The installed schema's History (one "Added ..." per member) and its semantic version are the table's."""
    text = (Path(schema.__file__).with_name("metadata_schema.fbs")).read_text()
    history = text[text.index("// History:"):].split("\n\n", 1)[0]
    versions, current = [], None
    for line in history.splitlines()[1:]:
        match = re.match(r"// (\d+\.\d+\.\d+) - (.*)", line)
        current = match.group(1) if match else current
        versions += [current] * line.count("Added")
    expected = collections.Counter(metadata_version.format_version(v) for v in metadata_version.MEMBER_VERSIONS.values())
    assert collections.Counter(versions) == expected
    semantic = re.search(r"Schema Semantic version: (\d+\.\d+\.\d+)", text).group(1)
    assert semantic == metadata_version.format_version(max(metadata_version.MEMBER_VERSIONS.values()))


def test_versions_compare_as_numbers():
    assert metadata_version.parse_version("1.14") > metadata_version.parse_version("1.9")
    assert metadata_version.parse_version("1.14") == metadata_version.parse_version("1.14.0")
    with pytest.raises(ValueError, match="1.x"):
        metadata_version.parse_version("1.x")


@pytest.mark.parametrize("data", [b"", b"not a flatbuffer at all", b"\x08\x00\x00\x00TFL3\x00\x00\x00\x00"])
def test_a_buffer_that_is_not_metadata_is_refused(data):
    with pytest.raises(ValueError, match="not a TFLite metadata flatbuffer"):
        metadata_version.minimum_parser_version(data)
