"""Teacher logits per training text, on disk: the cache behind cross-tokenizer distillation.

When teacher and student read text with different tokenizers (MPNet's 30,527-entry vocabulary and
MiniLM's 30,522, or any two architectures), their token positions do not line up: only what each
predicts for a whole text can be compared. The teacher therefore runs once over the training texts
(and their augmented copies), each tokenized with the teacher's own tokenizer, and the student learns
from those logits by row (:meth:`tfcompress.compress.distill.Distiller.use_teacher_logits`). A token task
compares words instead: the teacher's logits at the first sub-token of every word (:func:`word_positions`,
:func:`compute_word_logits`), placed at the student's first sub-token of the same word
(:func:`align_to_student`; words the teacher truncated get no target and are counted). For a word-level
hidden-state loss the same pass keeps the teacher's hidden states of the mapped layers at those first
sub-tokens (:func:`compute_word_outputs`, float16, in the same file, ``hidden_layers`` in its fields), and the
student reads its own hidden state of each word at :func:`student_word_positions`.

A cache file ``<cache_dir>/<teacher folder name>-<key>.npz`` holds ``logits`` (``[N, C]`` float32),
per-word ``hidden`` states when ``fields["hidden_layers"]`` asks for them, and ``fields``, a JSON object of everything the logits depend on (see :func:`cache_fields`): the
teacher (folder, weights digest, labels, max length) and the texts (count and digest, which covers the
training data and the augmentation), plus the augmentation settings for the reader. The key is a hash
of the fields, so another teacher, other data or another augmentation gets another file, and the log
says which fields differ from the teacher's other cache files. Writes are atomic; a computation that
is interrupted keeps its finished rows in ``<file>.partial.npz`` and the next run continues from
there. A file whose stored fields differ from the ones its name promises (copied, edited) is refused
with an error naming the field.

Under a MultiWorkerMirroredStrategy of W workers the chief alone reads and writes the cache folder: its
file or partial file reaches the others by an all-reduce, worker r computes every W-th missing row
(sentence, for per-word logits) from row r, and an all-reduce SUM of zero-filled arrays gives every
worker all rows (docs/distributed.md).
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tfcompress._compat import tf
from tfcompress.errors import ConfigError
from tfcompress.models import facts
from tfcompress.train import distribute
from tfcompress.utils import atomic_write_bytes, get_logger, sha256_file

log = get_logger("distill")

FORMAT = 1
# What the logits depend on in a teacher folder: config, weights, tokenizer files.
_TEACHER_FILE_PATTERNS = ("config.json", "*.h5", "*.safetensors", "*.bin", "*.index.json", "vocab.txt", "merges.txt",
                          "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
_NOT_IN_KEY = ("teacher",)  # where the teacher lies: recorded, but a moved folder keeps its logits


class TeacherCacheError(ConfigError):
    """A teacher-logits cache file does not match the teacher, data or augmentation asked for."""


def texts_digest(texts: Sequence) -> str:
    """sha256 over the texts in order (a text pair counts as its two parts)."""
    digest = hashlib.sha256()
    for text in texts:
        parts = text if isinstance(text, (tuple, list)) else (text,)
        for part in parts:
            digest.update(str(part).encode("utf-8"))
            digest.update(b"\x1f")
        digest.update(b"\x1e")
    return digest.hexdigest()


def weights_digest(teacher_dir) -> str:
    """sha256 over the teacher folder's config, weight and tokenizer files (names and contents)."""
    directory = Path(teacher_dir)
    files = sorted({p for pattern in _TEACHER_FILE_PATTERNS for p in directory.glob(pattern)})
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(path.name.encode("utf-8"))
            digest.update(sha256_file(path).encode("ascii"))
    return digest.hexdigest()


def cache_fields(teacher_dir, teacher_labels: Sequence[str], texts: Sequence, max_length: int,
                 augmentation: dict | None = None, dtype: str = "float32") -> dict:
    """What the cached logits depend on (``teacher``, the folder, is recorded but not compared: equal
    other fields mean interchangeable logits). ``teacher_dir`` must be a local folder."""
    directory = Path(teacher_dir)
    if not (directory / "config.json").is_file():
        raise TeacherCacheError(f"{teacher_dir}: not a model folder (no config.json); pass a local directory")
    return {
        "format": FORMAT,
        "teacher": str(directory.resolve()),
        "teacher_weights_sha256": weights_digest(directory),
        "teacher_dtype": str(dtype),
        "teacher_labels": [str(label) for label in teacher_labels],
        "teacher_max_length": int(max_length),
        "num_texts": len(texts),
        "texts_sha256": texts_digest(texts),
        "augmentation": dict(augmentation or {}),
    }


def _key(fields: dict) -> str:
    keyed = {k: v for k, v in fields.items() if k not in _NOT_IN_KEY}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def _differing(stored: dict, fields: dict) -> list[str]:
    """The fields (those that key the cache) where a file's stored values differ from ``fields``."""
    return [name for name in fields if name not in _NOT_IN_KEY and stored.get(name) != fields[name]]


def _file_stem(fields: dict) -> str:
    """A readable name: the teacher folder's last three path parts (run folders all end in .../model)."""
    parts = [part for part in Path(fields["teacher"]).parts[-3:] if part not in ("/", "")]
    return "-".join("".join(c if c.isalnum() or c in "._" else "_" for c in part) for part in parts) or "teacher"


def _logits_fn(teacher):
    """``features (tf tensors) -> float32 logits`` of ``teacher`` in inference mode, traced once per shape
    family; inputs the teacher does not take are dropped."""
    names = facts.model_input_names(teacher)

    @tf.function(reduce_retracing=True)
    def forward(features):
        return tf.cast(teacher({k: v for k, v in features.items() if k in names}, training=False).logits,
                       tf.float32)

    return forward


def compute_logits(teacher, data, batch_size: int = 64, rows: np.ndarray | None = None,
                   on_progress: Callable[[np.ndarray, np.ndarray], None] | None = None,
                   initial: np.ndarray | None = None) -> np.ndarray:
    """The teacher's float32 logits for the rows of ``data`` (an EncodedData made with the teacher's
    tokenizer), batched by length so little padding is computed.

    ``rows`` limits the work to those rows (the others keep ``initial``'s values, NaN without it);
    ``on_progress(rows_done, logits)`` is called after every batch with the rows finished so far.
    """
    forward = _logits_fn(teacher)
    lengths = np.asarray(data.lengths(), dtype=np.int64)
    rows = np.arange(len(lengths)) if rows is None else np.asarray(rows, dtype=np.int64)
    shape = (len(lengths), int(teacher.config.num_labels))
    logits = np.full(shape, np.nan, dtype=np.float32) if initial is None else np.array(initial, np.float32)
    if logits.shape != shape:
        raise ValueError(f"initial logits have shape {logits.shape}, expected {shape}")
    order = rows[np.argsort(lengths[rows], kind="stable")]
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        features, _ = data.padded_batch(indices)
        logits[indices] = forward({k: tf.constant(v) for k, v in features.items()}).numpy()
        if on_progress is not None:
            on_progress(order[:start + len(indices)], logits)
    return logits


def word_positions(tokenizer, words: Sequence[Sequence[str]], max_length: int,
                   spans: Sequence[tuple[int, int]] | None = None) -> list[np.ndarray]:
    """Per sentence, the token position of each word's first sub-token in ``tokenizer``'s encoding
    (special tokens counted, ``max_length`` applied); -1 for a word that got no token (cut by
    ``max_length`` or tokenised to nothing). ``spans``: per sentence ``(start, count)``, the positions of
    those words only (a sentence read inside its document context)."""
    if spans is not None:
        return [positions[start:start + count] for positions, (start, count) in
                zip(word_positions(tokenizer, words, max_length), spans)]
    out = []
    for start in range(0, len(words), 1024):
        chunk = [list(sentence) for sentence in words[start:start + 1024]]
        batch = tokenizer(chunk, truncation=True, max_length=max_length, is_split_into_words=True, verbose=False)
        for offset, sentence in enumerate(chunk):
            positions = np.full(len(sentence), -1, dtype=np.int64)
            for position, word in enumerate(batch.word_ids(offset)):
                if word is not None and positions[word] < 0:
                    positions[word] = position
            out.append(positions)
    return out


def _word_outputs_fn(teacher, hidden_layers: Sequence[int]):
    """``features -> (float32 logits, float32 hidden states [B, T, K, H] of hidden_layers)``, inference mode;
    ``hidden_states[0]`` is the embedding output, ``[k]`` block k's."""
    names = facts.model_input_names(teacher)
    layers = [int(layer) for layer in hidden_layers]

    @tf.function(reduce_retracing=True)
    def forward(features):
        outputs = teacher({k: v for k, v in features.items() if k in names}, training=False,
                          output_hidden_states=True)
        hidden = tf.stack([tf.cast(outputs.hidden_states[layer], tf.float32) for layer in layers], axis=2)
        return tf.cast(outputs.logits, tf.float32), hidden

    return forward


def compute_word_logits(teacher, data, positions: Sequence[np.ndarray], batch_size: int = 64,
                        sentences: np.ndarray | None = None) -> np.ndarray:
    """The teacher's logits at the first sub-token of every word: ``[total words, C]`` float32, sentence
    after sentence, word after word; NaN rows for words the teacher did not see (``positions`` -1).
    ``data``: the words encoded with the teacher's tokenizer (token task EncodedData). ``sentences``
    limits the work to those sentences (the other sentences' words stay NaN)."""
    return compute_word_outputs(teacher, data, positions, batch_size, sentences)[0]


def compute_word_outputs(teacher, data, positions: Sequence[np.ndarray], batch_size: int = 64,
                         sentences: np.ndarray | None = None, hidden_layers: Sequence[int] = ()) -> tuple:
    """:func:`compute_word_logits` and, for ``hidden_layers`` (0 = embeddings, k = block k), the teacher's
    hidden states at the same first sub-tokens: ``(logits, hidden [total words, K, H] float16 or None)``;
    the words the teacher did not see have NaN logits and zero hidden states."""
    counts = np.array([len(p) for p in positions], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    logits = np.full((int(counts.sum()), int(teacher.config.num_labels)), np.nan, dtype=np.float32)
    hidden = None
    if hidden_layers:
        forward = _word_outputs_fn(teacher, hidden_layers)
        hidden = np.zeros((int(counts.sum()), len(hidden_layers), facts.hidden_size(teacher)), dtype=np.float16)
    else:
        logits_only = _logits_fn(teacher)

        def forward(features):
            return logits_only(features), None
    lengths = np.asarray(data.lengths(), dtype=np.int64)
    if sentences is None:
        order = np.argsort(lengths, kind="stable")
    else:
        sentences = np.asarray(sentences, dtype=np.int64)
        order = sentences[np.argsort(lengths[sentences], kind="stable")]
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        features, _ = data.padded_batch(indices)
        values, states = forward({k: tf.constant(v) for k, v in features.items()})
        values = values.numpy()
        states = None if states is None else states.numpy()
        for row, example in enumerate(indices):
            seen = positions[example] >= 0
            logits[starts[example]:starts[example + 1]][seen] = values[row, positions[example][seen]]
            if states is not None:
                hidden[starts[example]:starts[example + 1]][seen] = states[row, positions[example][seen]]
    return logits, hidden


def student_word_positions(word_logits: np.ndarray, student_positions: Sequence[np.ndarray]) -> np.ndarray:
    """Per word, in order, the student's position of its first sub-token where the teacher has a target
    for it, -1 where either side did not see the word: ``[total words]`` int32, the index that reads the
    student's hidden state of each word (word-level hidden-state distillation)."""
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in student_positions]) if len(student_positions) else \
        np.zeros(0, np.int64)
    if len(flat) != len(word_logits):
        raise TeacherCacheError(f"teacher outputs cover {len(word_logits)} words, the student's data {len(flat)}: "
                                "the cache was made for other sentences")
    flat[np.isnan(word_logits).any(axis=1)] = -1
    return flat.astype(np.int32)


def align_to_student(word_logits: np.ndarray, student_positions: Sequence[np.ndarray],
                     student_lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-word teacher logits placed at the student's first sub-token of each word.

    Returns ``(values [sum T_i, C], mask [sum T_i], masked_words)``: student tokens in order (``T_i`` =
    the student's length of sentence ``i``), the teacher's logits at each word's first sub-token and 0
    elsewhere, ``mask`` 1 exactly there; ``masked_words`` counts the words the student kept but the
    teacher truncated (no target: masked).
    """
    counts = [len(p) for p in student_positions]
    if sum(counts) != len(word_logits):
        raise TeacherCacheError(f"teacher logits cover {len(word_logits)} words, the student's data {sum(counts)}: "
                                "the cache was made for other sentences")
    total = int(np.sum(student_lengths))
    values = np.zeros((total, word_logits.shape[1]), dtype=np.float32)
    mask = np.zeros(total, dtype=np.float32)
    masked, token, word = 0, 0, 0
    for positions, length in zip(student_positions, student_lengths):
        for position in positions:
            if position >= 0:
                if np.isnan(word_logits[word]).any():
                    masked += 1
                else:
                    values[token + position] = word_logits[word]
                    mask[token + position] = 1.0
            word += 1
        token += int(length)
    return values, mask, masked


class TeacherLogitCache:
    """Teacher logits files in ``directory`` (see the module docstring)."""

    def __init__(self, directory, save_every_seconds: float = 120.0):
        self.directory = Path(directory)
        self.save_every_seconds = save_every_seconds

    def path_for(self, fields: dict) -> Path:
        return self.directory / f"{_file_stem(fields)}-{_key(fields)}.npz"

    @staticmethod
    def _write(path: Path, fields: dict, logits: np.ndarray, hidden: np.ndarray | None = None) -> None:
        buffer = io.BytesIO()
        extra = {} if hidden is None else {"hidden": hidden.astype(np.float16, copy=False)}
        np.savez(buffer, logits=logits.astype(np.float32), fields=np.array(json.dumps(fields, sort_keys=True)),
                 **extra)
        atomic_write_bytes(path, buffer.getbuffer())

    @staticmethod
    def _read_hidden(path: Path, fields: dict) -> np.ndarray:
        """The per-word hidden states of a cache file made with ``fields["hidden_layers"]``."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                hidden = np.asarray(archive["hidden"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise TeacherCacheError(f"{path}: no readable hidden states ({error}); delete it to recompute") from error
        if hidden.shape[:2] != (fields["num_rows"], len(fields["hidden_layers"])):
            raise TeacherCacheError(f"{path}: hidden states have shape {hidden.shape}, expected "
                                    f"({fields['num_rows']}, {len(fields['hidden_layers'])}, width); delete it to "
                                    "recompute")
        return hidden

    @staticmethod
    def _read(path: Path) -> tuple[dict, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as archive:
                return json.loads(str(archive["fields"])), np.asarray(archive["logits"], dtype=np.float32)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise TeacherCacheError(f"{path}: not a readable teacher-logits cache ({error}); delete it to "
                                    "recompute") from error

    @staticmethod
    def check(path: Path, stored: dict, fields: dict, logits: np.ndarray) -> None:
        """Raise TeacherCacheError naming the first field where ``stored`` differs from ``fields``."""
        differ = _differing(stored, fields)
        if differ:
            name = differ[0]
            raise TeacherCacheError(
                f"{path}: teacher-logits cache field {name!r} is {stored.get(name)!r}, this run needs "
                f"{fields[name]!r} (the file was made for another teacher, data or augmentation); "
                "delete it to recompute")
        expected = (fields.get("num_rows", fields["num_texts"]), len(fields["teacher_labels"]))
        if logits.shape != expected:
            raise TeacherCacheError(f"{path}: logits have shape {logits.shape}, expected {expected}; delete it "
                                    "to recompute")

    def _explain_miss(self, fields: dict) -> None:
        stem = _file_stem(fields)
        for other in sorted(self.directory.glob(f"{stem}-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True):
            if other.name.endswith(".partial.npz"):
                continue
            try:
                stored, _ = self._read(other)
            except TeacherCacheError:
                continue
            differ = _differing(stored, fields)
            log.info("teacher logits: %s differs in %s; computing a new cache", other.name, ", ".join(differ))
            return

    def load(self, fields: dict, missing_rows_allowed: bool = False) -> np.ndarray | None:
        """The cached logits for ``fields``, or None when there is no complete file for them
        (``missing_rows_allowed``: per-word logits, where NaN marks a word the teacher truncated)."""
        path = self.path_for(fields)
        if not path.is_file():
            return None
        stored, logits = self._read(path)
        self.check(path, stored, fields, logits)
        if not missing_rows_allowed and np.isnan(logits).any():
            raise TeacherCacheError(f"{path}: {int(np.isnan(logits).any(axis=1).sum())} rows have no logits; "
                                    "delete it to recompute")
        return logits

    @staticmethod
    def _chief_state(strategy, fields: dict, logits, previous) -> tuple:
        """Several workers: the chief's complete file (``logits``) or partial one (``previous``), both
        None on the others, sent to every worker by one all-reduce (the others add zeros): all take the
        same decision from the chief's cache folder, the only one read. Returns ``(logits, previous)``."""
        shape = (fields.get("num_rows", fields["num_texts"]), len(fields["teacher_labels"]))
        known = logits if logits is not None else previous  # None on the other workers
        status = 0 if known is None else (2 if logits is not None else 1)  # 2: complete, 1: partial
        known, status = distribute.sum_over_workers(
            strategy, [np.zeros(shape, np.float32) if known is None else np.asarray(known, np.float32),
                       np.array([status], np.float32)])
        return (known, None) if status[0] == 2 else (None, known if status[0] == 1 else None)

    @staticmethod
    def _merge(strategy, logits: np.ndarray, owned: np.ndarray, texts: int, seconds: float) -> tuple:
        """Several workers: every worker's rows (``owned`` marks this worker's, from ``texts`` texts,
        computed in ``seconds``) combined by an all-reduce SUM of zero-filled arrays (NaN rows stay NaN).
        A worker waits for the others' shards up to the usual timeout plus twice its own time. Returns
        ``(merged logits, texts computed per worker)``."""
        counts = np.zeros(distribute.num_workers(strategy), np.float32)
        counts[distribute.worker_rank(strategy)] = texts
        merged, counts = distribute.sum_over_workers(
            strategy, [np.where(owned[:, None], logits, np.float32(0)).astype(np.float32), counts],
            timeout_seconds=distribute.shard_timeout(seconds))
        per_worker = [int(count) for count in counts]
        log.info("teacher logits: texts computed per worker %s (this is worker %d of %d)", per_worker,
                 distribute.worker_rank(strategy), len(per_worker))
        return merged, per_worker

    def load_or_compute(self, fields: dict, teacher, data, batch_size: int = 64,
                        strategy=None) -> tuple[np.ndarray, dict]:
        """Cached logits for ``fields``, else computed with ``teacher`` over ``data`` (EncodedData made
        with the teacher's tokenizer, one row per text) and saved. Returns ``(logits, info)``.

        With several workers (``strategy``, else the current one, a MultiWorkerMirroredStrategy) worker
        ``r`` of ``W`` computes the missing rows ``r, r + W, ...`` (in the order of the row indices), the
        all-reduce gives every worker all rows, and only the chief reads and writes the cache folder
        (the file, and its own rows in the partial file)."""
        if len(data) != fields["num_texts"]:
            raise ValueError(f"data has {len(data)} rows but the cache fields say {fields['num_texts']} texts")
        strategy = strategy or tf.distribute.get_strategy()
        workers, chief = distribute.num_workers(strategy), distribute.is_chief(strategy)
        path = self.path_for(fields)
        partial = path.with_name(path.name[:-len(".npz")] + ".partial.npz")
        started = time.time()
        logits = self.load(fields) if chief else None
        previous = None
        if chief and logits is None:
            self._explain_miss(fields)
            if partial.is_file():
                stored, previous = self._read(partial)
                self.check(partial, stored, fields, previous)
        if workers > 1:
            logits, previous = self._chief_state(strategy, fields, logits, previous)
        shards = {} if workers == 1 else {"shards": workers}
        if logits is not None:
            log.info("teacher logits: reusing %s (%d texts)", path, len(logits))
            return logits, {"file": str(path), "reused": True, "texts": len(logits), "computed": 0,
                            "seconds": round(time.time() - started, 1), **shards}
        missing = np.arange(len(data)) if previous is None else np.flatnonzero(np.isnan(previous).any(axis=1))
        if previous is not None:
            log.info("teacher logits: continuing %s (%d of %d texts done)", partial, len(data) - len(missing),
                     len(data))
        mine = missing[distribute.worker_rank(strategy)::workers]
        state = {"saved": time.time(), "logged": time.time()}

        def progress(done, values):
            now = time.time()
            if chief and now - state["saved"] >= self.save_every_seconds:
                self._write(partial, fields, values)
                state["saved"] = now
            if now - state["logged"] >= 60:
                log.info("teacher logits: %d of %d texts (%.0f s)", len(done), len(mine), now - started)
                state["logged"] = now

        computing = time.time()
        logits = compute_logits(teacher, data, batch_size, rows=mine, on_progress=progress, initial=previous)
        if workers > 1:
            owned = np.zeros(len(data), bool)
            owned[mine] = True
            merged, shards["texts_per_worker"] = self._merge(strategy, logits, owned, len(mine),
                                                              time.time() - computing)
            if previous is not None:  # the rows the chief's partial file held
                merged = np.where(np.isnan(previous).any(axis=1)[:, None], merged, previous)
            logits = merged
        bad = np.flatnonzero(np.isnan(logits).any(axis=1) | np.isinf(logits).any(axis=1))
        if bad.size:  # the teacher itself gave NaN/inf (e.g. float16 overflow): never cache it
            raise TeacherCacheError(f"teacher {fields['teacher']}: non-finite logits for {bad.size} texts (first rows "
                                    f"{bad[:5].tolist()}) under dtype {fields['teacher_dtype']}; nothing cached. Run the "
                                    "distill stage in float32 (distill_train.mixed_precision unset)")
        if chief:
            self._write(path, fields, logits)
            partial.unlink(missing_ok=True)
        seconds = time.time() - started
        log.info("teacher logits: %d texts in %.0f s -> %s", len(missing), seconds, path)
        return logits, {"file": str(path), "reused": False, "texts": len(logits), "computed": int(len(missing)),
                        "seconds": round(seconds, 1), **shards}

    def load_or_compute_words(self, fields: dict, teacher, data, positions, batch_size: int = 64,
                              strategy=None) -> tuple:
        """Per-word logits (:func:`compute_word_logits`) for ``fields`` (``num_rows`` = total words),
        cached or computed and saved (no partial file: a token task's teacher pass is short). With
        several workers, worker ``r`` of ``W`` computes sentences ``r, r + W, ...`` and the rows are
        merged as in :meth:`load_or_compute`; only the chief reads and writes the cache folder.

        ``fields["hidden_layers"]`` (teacher layers, 0 = embeddings): the teacher's hidden states at the
        same first sub-tokens too, float16, in the same file (one worker only).
        Returns ``(logits, hidden or None, info)``."""
        strategy = strategy or tf.distribute.get_strategy()
        workers, chief = distribute.num_workers(strategy), distribute.is_chief(strategy)
        hidden_layers = list(fields.get("hidden_layers") or ())
        if hidden_layers and workers > 1:
            raise ConfigError(f"distill.hidden_loss_weight with per-word targets runs on one worker; this strategy "
                              f"has {workers} (the teacher's word hidden states are not merged across workers)")
        path = self.path_for(fields)
        started = time.time()
        logits = self.load(fields, missing_rows_allowed=True) if chief else None
        hidden = self._read_hidden(path, fields) if logits is not None and hidden_layers else None
        if chief and logits is None:
            self._explain_miss(fields)
        if workers > 1:
            logits, _ = self._chief_state(strategy, fields, logits, None)
        shards = {} if workers == 1 else {"shards": workers}
        reused = logits is not None
        if not reused:
            sentences = np.arange(len(positions))[distribute.worker_rank(strategy)::workers]
            computing = time.time()
            logits, hidden = compute_word_outputs(teacher, data, positions, batch_size,
                                                  sentences=None if workers == 1 else sentences,
                                                  hidden_layers=hidden_layers)
            if workers > 1:
                owned = np.repeat(np.isin(np.arange(len(positions)), sentences), [len(p) for p in positions])
                logits, shards["texts_per_worker"] = self._merge(strategy, logits, owned, len(sentences),
                                                                 time.time() - computing)
            if np.isinf(logits).any() or (hidden is not None and not np.isfinite(hidden).all()):
                raise TeacherCacheError(f"teacher {fields['teacher']}: infinite logits or hidden states under "
                                        f"dtype {fields['teacher_dtype']} (hidden states stored as float16); "
                                        "nothing cached")
            if chief:
                self._write(path, fields, logits, hidden)
        unseen = int(np.isnan(logits).any(axis=1).sum())
        log.info("teacher word logits%s: %s %s (%d words, %d not seen by the teacher)",
                 f" and hidden states of layers {hidden_layers}" if hidden_layers else "",
                 "reusing" if reused else "computed", path, len(logits), unseen)
        info = {"file": str(path), "reused": reused, "texts": fields["num_texts"], "words": len(logits),
                "teacher_unseen_words": unseen, "seconds": round(time.time() - started, 1), **shards}
        if hidden_layers:
            info["hidden_layers"] = hidden_layers
        return logits, hidden, info
