"""Shared benchmark plumbing: environment record, JSON output, RESULTS.md section."""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfcompress._compat import tf, versions  # noqa: E402
from tfcompress.utils import atomic_write_json, atomic_write_text  # noqa: E402

HERE = Path(__file__).resolve().parent


def environment() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": [d.name for d in tf.config.list_physical_devices("GPU")],
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_results(name: str, command: str, result: dict, summary_lines: list[str], results_dir=None,
                  append_markdown: bool = True) -> Path:
    """Write ``<results_dir>/<name>.json`` (default ``benchmarks/results``) and, unless
    ``append_markdown`` is False (smoke runs), append a section to ``benchmarks/RESULTS.md``."""
    env = environment()
    record = {"benchmark": name, "command": command, "environment": env, **result}
    path = Path(results_dir or HERE / "results") / f"{name}.json"
    atomic_write_json(path, record)
    if not append_markdown:
        return path
    section = [f"## {env['date']} — {name}", "", f"Command: `{command}`", "",
               f"Machine: {env['cpu']}, {env['cores']} cores, GPU: {env['gpu'] or 'none'}; "
               f"TF {env['versions']['tensorflow']}, transformers {env['versions']['transformers']}, "
               f"TFMOT {env['versions']['tensorflow-model-optimization']}, LiteRT {env['versions']['ai-edge-litert']}",
               "", *summary_lines, "", f"Raw numbers: `{_shown(path)}`", "", ""]
    insert_archive_section(HERE / "RESULTS.md", "\n".join(section))
    return path


ARCHIVE_MARKER = "\n## 20"  # the first dated section of the archive (newest first)


def insert_archive_section(results_md: Path, section: str) -> None:
    """Put ``section`` at the top of RESULTS.md's archive, above the newest dated section."""
    text = results_md.read_text()
    start = text.index("## Archive")
    at = text.find(ARCHIVE_MARKER, start)
    at = len(text) if at < 0 else at + 1
    atomic_write_text(results_md, text[:at] + section.rstrip("\n") + "\n\n\n" + text[at:])


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def percentiles(values) -> dict:
    import numpy as np

    values = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "mean": float(values.mean()), "n": int(values.size)}


def fit_power_law(xs, ys) -> dict:
    """Least-squares fit of ``y = a * x**b`` on log-log axes: ``{"a", "b"}`` (b: the growth exponent)."""
    import numpy as np

    b, log_a = np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)
    return {"a": float(np.exp(log_a)), "b": float(b)}


def smoke_model_dir(folder, task: str = "sequence", num_labels: int = 2) -> str:
    """A tiny randomly initialised BERT (tests/conftest.py) and its tokenizer saved as an HF directory."""
    from transformers import BertTokenizerFast

    from tests.conftest import VOCAB, build_tiny_model
    from tfcompress.models.loading import save_model

    folder = Path(folder) / f"tiny-{task}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    # 128 positions: the stock CoNLL path pads to 128
    save_model(build_tiny_model(task, num_labels=num_labels, max_position_embeddings=128), tokenizer, folder)
    return str(folder)


def smoke_data_dir(folder, task: str = "sst2", train: int = 64, test: int = 32) -> str:
    """SST-2 or CoNLL-2003 style files built from the tiny rows of tests/conftest.py (no real data)."""
    from tests.conftest import CONLL_TEXT, SST_ROWS

    folder = Path(folder) / f"{task}-smoke"
    folder.mkdir(parents=True, exist_ok=True)
    if task == "sst2":
        rows = lambda n: "sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in (SST_ROWS * n)[:n])  # noqa: E731
        files = {"train.tsv": rows(train), "validation.tsv": rows(test), "test.tsv": rows(test),
                 "test1821.tsv": "sentence\tlabel\n" + "".join(f"{s}\t{l}\n" for s, l in SST_ROWS[::-1])}
    else:
        header, body = CONLL_TEXT.split("\n\n", 1)
        sentences = [s.strip() + "\n" for s in body.split("\n\n") if s.strip()]
        docs = lambda n: header + "\n\n" + "\n".join((sentences * n)[:n])  # noqa: E731
        files = {"train.txt": docs(train), "dev.txt": docs(test), "test.txt": docs(test)}
    for name, text in files.items():
        (folder / name).write_text(text)
    return str(folder)
