"""The ``distill`` stage: Distil the teacher into a smaller student.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from tfcompress._compat import keras
from tfcompress.compress import distill, prune, teacher_logits
from tfcompress.config.constants import IGNORE_INDEX
from tfcompress.data import augment, encoding, readers
from tfcompress.errors import ConfigError
from tfcompress.models import loading, make_student, packaged, surgery
from tfcompress.models.facts import model_input_names, reads_case
from tfcompress.pipeline.runner import Context, stage
from tfcompress.pipeline.stages.common import (
    model_facts,
    per_class_of,
    primary_name,
    scalars,
    strip_pruning,
    test_logits_and_metrics,
    total_steps,
)
from tfcompress.train.trainer import Trainer
from tfcompress.utils import get_logger

log = get_logger("pipeline")


def _augmented_texts(context: "Context") -> list:
    """``distill.augment_copies`` augmented copies of the training texts (token task: of the training
    sentences' word lists); [] when augmentation is off."""
    config = context.config.distill
    if not config.augment_copies:
        return []
    tokenizer = context.tokenizer()
    if tokenizer.mask_token is None:
        raise ConfigError(f"DistillConfig.augment_copies={config.augment_copies}: the tokenizer has no mask token")
    examples = context.examples("train")
    token = context.config.task == "token"
    sources = examples.words if token else examples.texts
    make = augment.augment_sentences if token else augment.augment_texts
    texts = make(sources, config.augment_copies, tokenizer.mask_token, mask_prob=config.augment_mask_prob,
                 ngram_prob=config.augment_ngram_prob, seed=_augment_seed(context),
                 replace_prob=config.augment_replace_prob, neighbours=_neighbours(context, sources, token))
    log.info("distill: %d augmented %s (%d copies asked per %d training examples), soft labels only", len(texts),
             "sentences" if token else "texts", config.augment_copies, len(examples))
    return texts


def _neighbours(context: "Context", sources: list, token: bool) -> dict | None:
    """Word -> nearest words in the run's model's input embeddings, for ``distill.augment_replace_prob``."""
    config = context.config.distill
    if not config.augment_replace_prob:
        return None
    model = context.load_model(context.current_model)
    layer, attr = surgery.word_embedding_ref(model)
    words = list(dict.fromkeys(word for source in sources for word in (source if token else source.split())))
    neighbours = augment.embedding_neighbours(context.tokenizer(), getattr(layer, attr).numpy(), words,
                                              k=config.augment_neighbours)
    log.info("distill: word replacement (p=%g) among the %d nearest words in the input embeddings of %s: "
             "%d of %d distinct training words have neighbours", config.augment_replace_prob,
             config.augment_neighbours, context.current_model, len(neighbours), len(words))
    return neighbours


def _transfer_examples(context: "Context") -> list:
    """The transfer set (``distill.transfer_file``): texts, or word lists for a token task; [] without one."""
    config = context.config.distill
    if not config.transfer_file:
        return []
    lines = readers.read_lines(config.transfer_file)
    if config.transfer_max:
        lines = lines[:config.transfer_max]
    log.info("distill: %d unlabelled %s from the transfer set %s, soft labels only", len(lines),
             "sentences" if context.config.task == "token" else "texts", config.transfer_file)
    return [line.split() for line in lines] if context.config.task == "token" else lines


def _augment_seed(context: "Context") -> int:
    seed = context.config.distill.augment_seed
    return context.config.distill_train.seed if seed is None else seed


def _unlabelled(context: "Context", texts: list, source: str):
    """Examples without hard labels: ``IGNORE_INDEX`` labels (sequence task), or word lists whose tags
    are a placeholder (token task: :func:`_training_data` drops their labels after encoding)."""
    examples = context.examples("train")
    if context.config.task == "token":
        filler = examples.label_names[0]
        return readers.TokenClassificationExamples(words=[list(words) for words in texts],
                                                   tags=[[filler] * len(words) for words in texts],
                                                   label_names=list(examples.label_names), source=source)
    return readers.TextClassificationExamples(texts=list(texts), labels=[IGNORE_INDEX] * len(texts),
                                              label_names=list(examples.label_names), source=source)


def _training_data(context: "Context", augmented: list):
    """The encoded training set plus the augmented texts (hard label ``IGNORE_INDEX``)."""
    train = context.encoded("train")
    if not augmented:
        return train
    source = f"{context.examples('train').source} (augmented)"
    encoded = encoding.encode(context.tokenizer(), _unlabelled(context, augmented, source),
                              max_length=context.config.data.max_length, input_names=train.input_names,
                              case_segments=train.case_segments)
    if encoded.task == "token":  # soft labels only: no word of an augmented sentence has a hard label
        encoded = dataclasses.replace(encoded, labels=[np.full_like(labels, IGNORE_INDEX) for labels in encoded.labels])
    return encoding.concatenate([train, encoded])


def _teacher_path(context: "Context") -> str:
    """``student.teacher``, else the model of this chain's ``teacher`` stage, else the current model (a
    teacher fine-tuned by an earlier command is named with ``--distill-from``, never picked up silently)."""
    if context.config.student.teacher:
        return loading.resolve_model_path(context.config.student.teacher)
    if "teacher" in context.stage_models:
        return context.stage_models["teacher"]
    return context.current_model


def _load_teacher(context: "Context", path: str):
    try:
        return context.load_model(path, teacher=True)  # reads case segment ids only if trained with them
    except loading.LabelMismatchError as error:
        raise ConfigError(f"student.teacher={path!r} (--distill-from): the teacher's label set must be the "
                          f"training file's: {error}") from error


def _same_tokenizer(teacher, teacher_tokenizer, context: "Context") -> bool:
    student_config = loading.read_model_config(context.current_model)[1]
    return (teacher.config.model_type == student_config.model_type
            and teacher_tokenizer.get_vocab() == context.tokenizer().get_vocab())


def _student_init(context: "Context", same: bool) -> str:
    init = context.config.student.init
    if init == "auto":
        return "teacher" if same else "model"
    if init == "teacher" and not same:
        raise ConfigError(f"student.init='teacher': the teacher {_teacher_path(context)} tokenizes differently "
                          f"from the run's model {context.current_model}; a student built from its blocks "
                          "would not read the run's token ids. Use student.init=model (or auto)")
    return init


def _teacher_mask(context: "Context", teacher_tokenizer) -> str:
    """The teacher's mask token, which reads the words an augmented example masked for the student."""
    if teacher_tokenizer.mask_token is None:
        raise ConfigError(f"distill.augment_copies={context.config.distill.augment_copies}: the teacher "
                          f"{_teacher_path(context)} has no mask token to read the masked copies with")
    return teacher_tokenizer.mask_token


def _augmentation(context: "Context", augmented: list) -> dict:
    """What the augmented and transfer examples depend on (part of the teacher-logits cache key; their texts
    are in it too); {} without them."""
    config = context.config.distill
    if not augmented:
        return {}
    out = {}
    if config.augment_copies:
        out.update(copies=config.augment_copies, mask_prob=config.augment_mask_prob,
                   ngram_prob=config.augment_ngram_prob, seed=_augment_seed(context))
        if config.augment_replace_prob:  # only when on: the caches of runs without it keep their keys
            out.update(replace_prob=config.augment_replace_prob, neighbours=config.augment_neighbours,
                       neighbours_from=Path(context.current_model).name)
    if config.transfer_file:  # the file's name (its lines are in the texts' digest), not where it lies
        out.update(transfer_file=Path(config.transfer_file).name, transfer_max=config.transfer_max)
    return out


def _cross_tokenizer_logits(context: "Context", teacher, teacher_tokenizer, augmented: list) -> tuple:
    """The teacher's logits for every training text (then the augmented ones), each read with the
    teacher's own tokenizer, from the on-disk cache or computed into it."""
    config = context.config
    # An augmented text masks words with the student's mask token; the teacher reads its own.
    student_mask = context.tokenizer().mask_token
    texts = list(context.examples("train").texts) + list(augmented)
    if config.distill.augment_copies and student_mask:
        texts = [text.replace(student_mask, _teacher_mask(context, teacher_tokenizer)) for text in texts]
    fields = teacher_logits.cache_fields(_teacher_path(context), loading.config_labels(teacher.config), texts,
                                         config.data.max_length, _augmentation(context, augmented), dtype=_policy())
    cache = _cache(context)
    data = encoding.encode(teacher_tokenizer, _unlabelled(context, texts, "teacher view"),
                           max_length=config.data.max_length, input_names=model_input_names(teacher),
                           case_segments=reads_case(teacher))
    return cache.load_or_compute(fields, teacher, data, batch_size=config.distill_train.eval_batch_size)


def _policy() -> str:
    """Keras' global dtype policy: the teacher is built under it, and its logits depend on it."""
    return keras.mixed_precision.global_policy().name


def _cache(context: "Context") -> "teacher_logits.TeacherLogitCache":
    directory = context.config.distill.teacher_cache_dir or packaged.cache_root() / "teacher-logits"
    return teacher_logits.TeacherLogitCache(Path(directory))


def _teacher_view(context: "Context", teacher_tokenizer, split: str):
    """Token task: the ``split`` examples as a teacher of another tokenizer reads them: each sentence
    inside ``distill.teacher_document_context`` words of its document (cut to fit ``data.max_length``
    with the teacher's tokenizer), or alone (0), whatever context the student reads."""
    examples, words = context.examples(split), context.config.distill.teacher_document_context
    if not words:
        return dataclasses.replace(examples, left=None, right=None)
    return encoding.fit_context(teacher_tokenizer, readers.with_document_context(examples, words),
                                context.config.data.max_length)


def _sentence_spans(examples, words: list) -> list:
    """``(start, count)`` of each sentence's own words in what a model reads: the training sentences of
    ``examples`` after their left context, then the augmented / transfer sentences (read alone)."""
    lefts = examples.left_counts() + [0] * (len(words) - len(examples))
    return [(left, len(sentence)) for left, sentence in zip(lefts, words)]


def _cross_tokenizer_word_targets(context: "Context", teacher, teacher_tokenizer, train, augmented: list,
                                  hidden_layers: list) -> tuple:
    """Token task: the teacher's logits at the first sub-token of every training word, then of every
    word of the augmented sentences (its own tokenizer, its own mask token), cached on disk per word,
    placed at the student's first sub-token of the same word; with ``hidden_layers`` (the layer map's
    teacher layers) its hidden states there too.
    Returns ``(values, mask, info, hidden)``: the first three for
    :meth:`Distiller.use_teacher_token_logits`, ``hidden`` its word-level keywords ({} without layers)."""
    config = context.config
    max_length = config.data.max_length
    words = [list(sentence) for sentence in context.examples("train").words] + [list(s) for s in augmented]
    # What the teacher reads: each training sentence alone or inside its distill.teacher_document_context,
    # then the augmented / transfer sentences alone; its targets are taken at the sentence's own words.
    seen = _teacher_view(context, teacher_tokenizer, "train")
    teacher_words = seen.words_in_context() + [list(s) for s in augmented]
    teacher_spans = _sentence_spans(seen, words)
    if config.distill.augment_copies:  # the masked words, read with the teacher's own mask token
        student_mask, teacher_mask = context.tokenizer().mask_token, _teacher_mask(context, teacher_tokenizer)
        teacher_words = [[teacher_mask if word == student_mask else word for word in sentence]
                         for sentence in teacher_words]
    fields = teacher_logits.cache_fields(_teacher_path(context), loading.config_labels(teacher.config),
                                         teacher_words, max_length, _augmentation(context, augmented), dtype=_policy())
    fields["num_rows"] = sum(len(sentence) for sentence in words)
    if hidden_layers:  # only then: a logits-only cache keeps its key
        fields["hidden_layers"] = [int(layer) for layer in hidden_layers]
    if config.distill.teacher_document_context:  # likewise
        fields["teacher_document_context"] = config.distill.teacher_document_context
    data = encoding.encode(teacher_tokenizer, _unlabelled(context, teacher_words, "teacher view"), max_length=max_length,
                           input_names=model_input_names(teacher), case_segments=reads_case(teacher))
    positions = teacher_logits.word_positions(teacher_tokenizer, teacher_words, max_length, teacher_spans)
    word_logits, word_hidden, info = _cache(context).load_or_compute_words(
        fields, teacher, data, positions, batch_size=config.distill_train.eval_batch_size)
    # The student may read each sentence in its own document context (data.document_context): its
    # positions of the sentence's words then start after its left context.
    examples = encoding.fit_context(context.tokenizer(), context.examples("train"), max_length)  # as encode cut it
    student_positions = teacher_logits.word_positions(
        context.tokenizer(), examples.words_in_context() + [list(s) for s in augmented], max_length,
        _sentence_spans(examples, words))
    values, mask, masked = teacher_logits.align_to_student(word_logits, student_positions, train.lengths())
    info["student_words_without_target"] = masked
    if masked:
        log.info("distill: %d training words the student reads were cut by the teacher's max_length=%d: no "
                 "teacher target there (masked)", masked, max_length)
    hidden = {} if word_hidden is None else {
        "word_hidden": word_hidden, "words_per_example": [len(sentence) for sentence in words],
        "word_positions": teacher_logits.student_word_positions(word_logits, student_positions)}
    return values, mask, info, hidden


@stage("distill")
def distill_stage(context: Context) -> dict:
    """Distil the teacher (``student.teacher``, the ``teacher`` stage's model, or the current model)
    into a ``student.num_layers`` student.

    The student starts from evenly spaced blocks of the teacher or of the current model
    (``student.init``) and trains through the Trainer with the Distiller's loss and hooks. A teacher
    that tokenizes like the student is run on the student's batches (or cached in memory with
    ``distill.cache_teacher``); one of another architecture or tokenizer teaches through its per-text
    logits (token task: per-word logits, and hidden states with ``distill.hidden_loss_weight``), computed
    once with its own tokenizer and kept on disk. Records teacher and student test
    metrics (each read with its own tokenizer), parameter counts and the layer map.
    """
    config = context.config
    stage_dir = context.stage_dir("distill")
    teacher_path = _teacher_path(context)
    started = time.time()
    teacher = _load_teacher(context, teacher_path)
    teacher_tokenizer = loading.load_tokenizer(teacher_path)
    same = _same_tokenizer(teacher, teacher_tokenizer, context)
    if same and config.task == "token" and (config.distill.augment_copies or config.distill.transfer_file):
        field = "augment_copies" if config.distill.augment_copies else "transfer_file"
        raise ConfigError(f"distill.{field}={getattr(config.distill, field)!r}: unlabelled sentences of a token "
                          "task are taught through the per-word targets of a teacher with another tokenizer; "
                          f"{teacher_path} tokenizes like the student and teaches at the labelled sub-tokens only "
                          f"(unset {field})")
    if same and config.distill.teacher_document_context:
        raise ConfigError(f"distill.teacher_document_context={config.distill.teacher_document_context}: {teacher_path} "
                          "tokenizes like the student and reads the student's batches (their context is "
                          f"data.document_context={config.data.document_context}); unset it")
    if same and reads_case(teacher) != config.data.case_segments:
        raise ConfigError(f"data.case_segments={str(config.data.case_segments).lower()}: {teacher_path} tokenizes like "
                          "the student and reads the student's batches, but it was trained "
                          f"{'with' if reads_case(teacher) else 'without'} case segment ids (config.json: "
                          "case_segments); set data.case_segments as the teacher was trained")
    init = _student_init(context, same)
    if init == "teacher":
        student = make_student(teacher, num_layers=config.student.num_layers)
    else:
        fresh_head = context.current_model not in context.stage_models.values()
        base = context.load_model(pooling=config.pooling if fresh_head and config.task == "sequence" else None)
        student = make_student(base, num_layers=config.student.num_layers)
        del base
    transfer = _transfer_examples(context)
    augmented = _augmented_texts(context) + transfer  # unlabelled: the teacher's soft labels only
    train, evaluation = _training_data(context, augmented), context.encoded("eval")
    pruning, steps = config.prune.during == "distill", total_steps(train, config.distill_train)
    if pruning:  # TFMOT wrappers on the student before the Distiller and the Trainer's checkpoint see it
        prune.apply(student, config.prune, total_steps=steps)
    distiller = distill.Distiller(teacher, student, config.distill, task=config.task, same_tokenizer=same)
    cache, logits_file = None, None
    # cross-tokenizer: logits, and per-word hidden states in a token task (attention maps refused)
    needs_teacher = config.distill.alpha < 1.0 or config.distill.needs_hidden_states
    if not same and not needs_teacher:
        log.info("distill: alpha=1.0, the student learns from the labels only; no teacher logits computed")
    elif not same and config.task == "token":
        hidden_layers = [t for t, _ in distiller.layer_map] if config.distill.needs_hidden_states else []
        values, mask, logits_file, hidden = _cross_tokenizer_word_targets(context, teacher, teacher_tokenizer, train,
                                                                          augmented, hidden_layers)
        cache = distiller.use_teacher_token_logits(values, mask, train.lengths(), **hidden)
        del values, mask, hidden  # the Distiller holds them now (the hidden states: gigabytes)
    elif not same:
        logits, logits_file = _cross_tokenizer_logits(context, teacher, teacher_tokenizer, augmented)
        cache = distiller.use_teacher_logits(logits)
    elif config.distill.cache_teacher:
        cache = distiller.cache_teacher_outputs(train, batch_size=config.distill_train.eval_batch_size)
    hooks = distill.hooks(distiller) + (prune.hooks(config.prune) if pruning else [])
    trainer = Trainer(distiller, config.task, config.distill_train, stage_dir, hooks=hooks,
                      loss_fn=distiller.loss_fn, label_names=context.label_names, stage="distill")
    result = trainer.fit(train, evaluation)
    pruned = strip_pruning(distiller.student, config.prune, steps) if pruning else {}
    if pruned:
        log.info("distill: pruned while distilling, sparsity %.3f of the pruned layers (%.3f of all weight matrices)",
                 pruned["pruned_sparsity"], pruned["global_sparsity"])
    loading.save_model(distiller.student, context.tokenizer(), stage_dir / "model")
    _, student_metrics = test_logits_and_metrics(context, distiller.student)
    teacher_view = _teacher_view(context, teacher_tokenizer, "test") if not same and config.task == "token" else None
    _, teacher_metrics = test_logits_and_metrics(context, teacher, tokenizer=None if same else teacher_tokenizer,
                                                 examples=teacher_view)
    facts = model_facts(distiller.student, stage_dir / "model")
    description = distiller.describe()
    report = context.report()
    record = report.set_stage(
        "distill", metrics=scalars(student_metrics), seconds=time.time() - started, output="distill/",
        model_dir="distill/model", input_model=str(context.current_model if init == "model" else teacher_path),
        teacher=str(teacher_path), student_init=init, same_tokenizer=same, teacher_logits=logits_file,
        teacher_metrics=scalars(teacher_metrics), teacher_document_context=config.distill.teacher_document_context,
        eval_metrics=scalars(result["metrics"]),
        teacher_params=description["teacher_params"], student_params=description["student_params"],
        layer_map=description["layer_map"], distillation=description, teacher_cache=cache,
        augmented_examples=len(augmented) - len(transfer), transfer_examples=len(transfer),
        best_step=result["best_step"], steps=result["steps"],
        train_samples_per_second=result["samples_per_second"], per_class=per_class_of(student_metrics), **pruned,
        **facts)
    report.save()
    primary = primary_name(context)
    log.info("distill: student (%d layers, from the %s) %s=%.4f, teacher (%d layers) %.4f",
             description["student_layers"], init, primary, student_metrics[primary], description["teacher_layers"],
             teacher_metrics[primary])
    return record
