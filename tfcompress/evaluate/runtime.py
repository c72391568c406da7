"""Run TFLite artifacts with the ``ai_edge_litert`` interpreter: predictions, latency, inspection.

:class:`TFLiteModel` wraps one ``.tflite`` file exported by :mod:`tfcompress.export` (signature
``serving_default``, int32 inputs ``[1, seq_length]``, output ``logits``). Its :meth:`predict` takes
the same features dict as a Keras model (``[B, T]`` int arrays), loops over the batch at batch 1,
pads/truncates each row to the artifact's length and dequantizes int8 logits, so one
``predict_fn`` serves Keras models and artifacts alike in :mod:`tfcompress.metrics`.

:func:`artifact_record` evaluates an artifact and returns the ``report.json`` artifact record
(metric, agreement with Keras, size raw/gzip, latency p50/p90 at 1 and 2 threads, float ops,
``passed`` by the parity gate).

Example:
    >>> artifact = TFLiteModel("out/export/int8.tflite", num_threads=2)
    >>> logits = artifact.predict({"input_ids": ids, "attention_mask": mask})
"""
from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tfcompress.utils import get_logger, gzip_size
from tfcompress.errors import ArtifactError

log = get_logger("runtime")

# Ops that only move data between float and integer domains; they do not compute in float.
_CONVERSION_OPS = {"QUANTIZE", "DEQUANTIZE"}
# Ops whose float tensors are integer-valued bookkeeping (shapes, indices), not activations.
_INDEX_OPS = {"SHAPE", "CAST", "RESHAPE", "GATHER", "STRIDED_SLICE", "PACK", "UNPACK", "SQUEEZE",
              "EXPAND_DIMS", "CONCATENATION", "TRANSPOSE", "SLICE"}


def _interpreter(model, num_threads: int = 1, xnnpack: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model), num_threads=num_threads, experimental_op_resolver_type=resolver)
    try:
        return Interpreter(model_path=str(model), num_threads=num_threads, experimental_op_resolver_type=resolver)
    except ValueError as error:  # LiteRT's message does not name the file
        raise ArtifactError(f"{model}: not a readable .tflite flatbuffer ({error}); re-export it") from None


class TFLiteModel:
    """A ``.tflite`` artifact with the tfcompress signature, run by ``ai_edge_litert``.

    Args:
        path: artifact file (or the flatbuffer bytes).
        num_threads: interpreter threads (XNNPACK delegate uses them too).
        signature_key: signature to run (``serving_default``).
        xnnpack: apply LiteRT's default XNNPACK delegate (False: the builtin kernels only, what a
            runtime without XNNPACK runs).
    """

    def __init__(self, path, num_threads: int = 1, signature_key: str = "serving_default", xnnpack: bool = True):
        self.path = path
        self.num_threads = num_threads
        self.interpreter = _interpreter(path, num_threads, xnnpack)
        self._invoked = False
        signatures = self.interpreter.get_signature_list()
        if signature_key not in signatures:
            raise ValueError(f"{path}: no signature {signature_key!r}; has {sorted(signatures)}")
        self.runner = self.interpreter.get_signature_runner(signature_key)
        self.input_details = self.runner.get_input_details()
        self.output_details = self.runner.get_output_details()
        self.input_names = list(signatures[signature_key]["inputs"])
        self.output_names = list(signatures[signature_key]["outputs"])
        if "logits" not in self.output_details:
            raise ValueError(f"{path}: signature outputs {self.output_names}, expected 'logits'")
        shapes = {tuple(detail["shape"]) for detail in self.input_details.values()}
        if len(shapes) != 1:
            raise ValueError(f"{path}: inputs of different shapes {shapes}")
        self.batch_size, self.seq_length = next(iter(shapes))
        logits = self.output_details["logits"]
        self.output_dtype = np.dtype(logits["dtype"])
        scales, zero_points = logits["quantization_parameters"]["scales"], \
            logits["quantization_parameters"]["zero_points"]
        self.output_scale = float(scales[0]) if len(scales) else None
        self.output_zero_point = int(zero_points[0]) if len(zero_points) else None

    def _run_one(self, row: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {}
        for name in self.input_names:
            detail = self.input_details[name]
            value = np.asarray(row[name])
            length = value.shape[1]
            if length > self.seq_length:
                value = value[:, : self.seq_length]
            elif length < self.seq_length:
                value = np.pad(value, ((0, 0), (0, self.seq_length - length)))
            inputs[name] = value.astype(detail["dtype"])
        logits = self.runner(**inputs)["logits"]
        self._invoked = True
        if self.output_dtype != np.float32:
            logits = (logits.astype(np.float32) - self.output_zero_point) * self.output_scale
        return logits

    def predict(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for a batch: sequence task ``[B, C]``; token task ``[B, T, C]`` (T of the input).

        Rows longer than the artifact's length are truncated; for token tasks the positions past it
        get zero logits (evaluate at a ``pad_to`` <= the artifact's length to avoid that).
        """
        missing = [name for name in self.input_names if name not in features]
        if missing:
            raise KeyError(f"features lack {missing}; the artifact needs {self.input_names}")
        batch, length = np.asarray(features[self.input_names[0]]).shape
        outputs = []
        for b in range(batch):
            outputs.append(self._run_one({name: np.asarray(features[name])[b: b + 1]
                                          for name in self.input_names}))
        logits = np.concatenate(outputs, axis=0)
        if logits.ndim == 3:  # token task: back to the caller's length
            if length <= self.seq_length:
                logits = logits[:, :length]
            else:
                logits = np.pad(logits, ((0, 0), (0, length - self.seq_length), (0, 0)))
        return logits

    __call__ = predict

    def _default_row(self) -> dict[str, np.ndarray]:
        """All-ones token ids, full mask, segment 0: one ``[1, seq_length]`` example."""
        row = {name: np.ones((1, self.seq_length), np.int32) for name in self.input_names}
        if "token_type_ids" in row:
            row["token_type_ids"][:] = 0
        return row

    def xnnpack_partitions(self) -> int:
        """:func:`xnnpack_partitions` of this interpreter as configured (0 with ``xnnpack=False``).

        LiteRT applies its default delegate at the first invocation; one is run first if needed.
        """
        if not self._invoked:
            self._run_one(self._default_row())
        return _delegate_count(self.interpreter)

    def latency(self, features: dict[str, np.ndarray] | None = None, warmup: int = 10,
                runs: int = 100) -> dict[str, float]:
        """Batch-1 latency in ms, ``{"p50", "p90", "mean"}``, after ``warmup`` untimed runs.

        Args:
            features: one example (``[1, T]`` arrays); default: all-ones ids, full mask.
            warmup: untimed invocations first (XNNPACK packs weights on the first run).
            runs: timed invocations.
        """
        row = {name: np.asarray(features[name])[:1] for name in self.input_names} if features is not None \
            else self._default_row()
        for _ in range(warmup):
            self._run_one(row)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self._run_one(row)
            times.append((time.perf_counter() - start) * 1000.0)
        return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90)),
                "mean": float(np.mean(times))}

    def io_details(self) -> dict:
        """Names, dtypes, shapes and quantization (scale, zero point) of inputs and outputs."""
        def describe(detail):
            params = detail["quantization_parameters"]
            out = {"dtype": np.dtype(detail["dtype"]).name, "shape": [int(d) for d in detail["shape"]]}
            if len(params["scales"]):
                out["scale"] = float(params["scales"][0])
                out["zero_point"] = int(params["zero_points"][0])
            return out

        return {"inputs": {name: describe(self.input_details[name]) for name in self.input_names},
                "outputs": {name: describe(self.output_details[name]) for name in self.output_names}}


# --------------------------------------------------------------------------------------------
# Inspection


def op_tensor_types(model) -> list[dict]:
    """Every op of the main subgraph with its input/output tensor dtypes.

    Returns rows ``{"op", "inputs": [dtype names], "outputs": [dtype names]}`` (constants
    included in inputs, so an int8 FULLY_CONNECTED shows ``["int8", "int8", "int32"]``).
    """
    interpreter = _interpreter(model)
    dtypes = {detail["index"]: np.dtype(detail["dtype"]).name
              for detail in interpreter.get_tensor_details()}
    rows = []
    for op in interpreter._get_ops_details():  # pylint: disable=protected-access
        rows.append({
            "op": op["op_name"],
            "inputs": [dtypes.get(int(i), "none") for i in op["inputs"] if int(i) >= 0],
            "outputs": [dtypes.get(int(i), "none") for i in op["outputs"] if int(i) >= 0],
        })
    return rows


def op_names(model) -> list[str]:
    """Op names of the main subgraph, in execution order."""
    return [row["op"] for row in op_tensor_types(model)]


def float_ops(model) -> list[str]:
    """Compute ops left in float (float32/float16 outputs), as ``"OP_NAME xCOUNT"`` sorted by name.

    QUANTIZE/DEQUANTIZE are not counted (they only cross domains), nor index bookkeeping ops.
    A full-integer artifact returns ``[]``.
    """
    counts = collections.Counter(
        row["op"] for row in op_tensor_types(model)
        if row["op"] not in _CONVERSION_OPS and row["op"] not in _INDEX_OPS
        and any(dtype in ("float32", "float16") for dtype in row["outputs"]))
    return [f"{name} x{count}" for name, count in sorted(counts.items())]


def int8_kernel_count(model, op: str = "FULLY_CONNECTED") -> tuple[int, int]:
    """``(int8, total)``: how many ``op`` kernels take int8 activations and int8 weights."""
    rows = [row for row in op_tensor_types(model) if row["op"] == op]
    int8 = [row for row in rows if row["inputs"][:2] == ["int8", "int8"]]
    return len(int8), len(rows)


def xnnpack_partitions(model) -> int:
    """How many pieces the CPU runtime's XNNPACK delegate takes the graph in (1: all of it).

    Every op XNNPACK has no kernel for at its tensor types (on LiteRT 2.3 e.g. int8 SOFTMAX, int8
    GELU and int8 BATCH_MATMUL) runs on LiteRT's builtin kernels instead and splits the graph
    around it; each split costs a hand-over between the two at every invocation. 0: XNNPACK took
    nothing (or is not in this runtime).
    """
    interpreter = _interpreter(model)
    interpreter.allocate_tensors()  # the default delegate is applied here
    return _delegate_count(interpreter)


def _delegate_count(interpreter) -> int:
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())  # pylint: disable=protected-access


def sizes(path) -> dict[str, int]:
    """``{"size_bytes", "gzip_bytes"}`` of a file (gzip level 9, as a download would see it)."""
    data = Path(path).read_bytes()
    return {"size_bytes": len(data), "gzip_bytes": gzip_size(data)}


def predict_fn(path, num_threads: int = 2) -> Callable[[dict], np.ndarray]:
    """``features -> logits`` for :mod:`tfcompress.metrics`."""
    return TFLiteModel(path, num_threads=num_threads).predict
