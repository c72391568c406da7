"""``tfcompress env``: versions and hardware, for bug reports."""
from __future__ import annotations

import json
import os
import platform


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("env", help="print versions and hardware (paste into bug reports)",
                                   description="Print versions of TF, tf-keras, TFMOT, transformers, LiteRT "
                                               "and the CPU/GPU devices TensorFlow sees.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=command)


def environment() -> dict:
    # deferred: only this report needs the device list and the versions
    from tfcompress._compat import tf, versions

    info = {"versions": versions(), "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "devices": [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()],
            "gpu_available": bool(tf.config.list_physical_devices("GPU")),
            "tf_keras_is_tf_keras": tf.keras.__name__.startswith("tf_keras")}
    try:  # deferred: a missing packaged model is reported, not raised
        from tfcompress.models.packaged import minilm_path

        info["packaged_model"] = minilm_path()
    except Exception as error:  # report, don't fail: env is for bug reports
        info["packaged_model"] = f"unavailable ({error})"
    return info


def command(args) -> int:
    info = environment()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for name, version in info["versions"].items():
        print(f"{name:32s} {version}")
    for key in ("platform", "cpu", "cpu_count", "devices", "gpu_available", "tf_keras_is_tf_keras", "packaged_model"):
        print(f"{key:32s} {info[key]}")
    return 0
