"""Shared benchmark plumbing: environment record, JSON output, RESULTS.md section."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfcompress._compat import tf, versions  # noqa: E402
from tfcompress.utils import atomic_write_json  # noqa: E402

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


def write_results(name: str, command: str, result: dict, summary_lines: list[str]) -> Path:
    """Write ``benchmarks/results/<name>.json`` and append a section to ``benchmarks/RESULTS.md``."""
    env = environment()
    record = {"benchmark": name, "command": command, "environment": env, **result}
    path = HERE / "results" / f"{name}.json"
    atomic_write_json(path, record)
    section = [f"## {name} ({env['date']})", "", f"Command: `{command}`", "",
               f"Machine: {env['cpu']}, {env['cores']} cores, GPU: {env['gpu'] or 'none'}; "
               f"TF {env['versions']['tensorflow']}, transformers {env['versions']['transformers']}, "
               f"TFMOT {env['versions']['tensorflow-model-optimization']}, LiteRT {env['versions']['ai-edge-litert']}",
               "", *summary_lines, "", f"Raw numbers: `benchmarks/results/{name}.json`", "", ""]
    with open(HERE / "RESULTS.md", "a") as handle:
        handle.write("\n".join(section))
    return path


def percentiles(values) -> dict:
    import numpy as np

    values = np.asarray(values, dtype=float)
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "mean": float(values.mean()), "n": int(values.size)}
