"""Small shared helpers: atomic writes, seeding, logging."""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from tfcompress._compat import keras


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never half.

    Temporary files a killed writer left for the same path (``.name.tmp-PID`` of a dead process) are
    removed first (on a full disk they are what fills it); a write that fails (``OSError``: disk full,
    read-only folder) removes its own temporary file before the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if stale.is_file() and pid.isdigit() and not _pid_alive(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(obj) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, to_json(obj))


@contextlib.contextmanager
def atomic_dir(final_dir):
    """Build a directory under a temporary name and move it into place only if the block succeeds.

    An existing ``final_dir`` is replaced as a whole; an interrupted build leaves at most a
    ``.name.tmp-PID`` folder beside it (removed by the next successful build), never a half-written
    ``final_dir``.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in final_dir.parent.glob(f".{final_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = _tmp_name(final_dir)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, old)
        os.replace(tmp, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final_dir)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy, TensorFlow and Keras's own seed generator (op-level seeds stay TF's own).

    ``keras.utils.set_random_seed`` also restarts the generator Keras draws layer seeds from (dropout,
    initializers): without it, a program that called it earlier with another seed would train other
    dropout masks than a fresh process with the same ``seed``.
    """
    keras.utils.set_random_seed(int(seed))


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"tfcompress.{name}")
    root = logging.getLogger("tfcompress")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logger


def is_tty() -> bool:
    """Whether stderr is a terminal (progress bars only then)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def gzip_size(data: bytes) -> int:
    """Bytes after gzip level 9: what a download of ``data`` costs."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))
