"""Integer-only verification of a ``.tflite`` artifact, read from its flatbuffer (not from the mode name).

NPUs, DSPs and the Edge TPU run integer graphs only: one float op sends the model back to the CPU.
:func:`integer_report` reads every op of the main subgraph with LiteRT's own generated schema
(``ai_edge_litert.schema_py_generated``) and checks the type of every input and output tensor,
CAST, GATHER, QUANTIZE and DEQUANTIZE included (:func:`tfcompress.evaluate.runtime.float_ops` skips
those, and misses e.g. the float CASTs of the attention-mask path of a float-island int8 artifact).

An artifact is *integer-only* when

* no op has a float tensor (float32/float16/float64/bfloat16) among its inputs or outputs, except a
  QUANTIZE whose float input is a graph input and a DEQUANTIZE whose float output is a graph output
  (float I/O converted at the edges);
* int32/int64/bool tensors appear only as constants (biases, shapes, indices), graph inputs (token
  ids, the mask) or on index and shape ops (GATHER indices, RESHAPE shapes, SHAPE...): an int32
  activation computed by ADD or MUL is not what an int8/int16 accelerator runs.

The report also has a precision table: per op type, how many ops compute in int8, int16, float or
int32 (index ops), and their share of the model's multiply-accumulates (MACs of FULLY_CONNECTED,
BATCH_MATMUL, CONV_2D and DEPTHWISE_CONV_2D from the tensor shapes).

Example:
    >>> report = integer_report("runs/sst2/export/integer.tflite")
    >>> report["integer_only"], report["offenders"][:1], report["precision"]["FULLY_CONNECTED"]
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from tfcompress.errors import ArtifactError

FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")
INDEX_TYPES = ("int32", "int64", "bool", "uint8")
# Ops whose int32/int64/bool tensors are bookkeeping (shapes, indices, token ids), not activations.
INDEX_OPS = frozenset({
    "GATHER", "GATHER_ND", "EMBEDDING_LOOKUP", "SHAPE", "RESHAPE", "STRIDED_SLICE", "SLICE", "PACK",
    "UNPACK", "SQUEEZE", "EXPAND_DIMS", "CONCATENATION", "TRANSPOSE", "BROADCAST_TO", "FILL", "RANGE",
    "ARG_MAX", "ARG_MIN", "ONE_HOT", "SPLIT", "SPLIT_V", "TILE", "PAD", "PADV2", "SELECT", "SELECT_V2",
    "WHERE", "CAST", "EQUAL", "NOT_EQUAL", "LESS", "GREATER", "LOGICAL_AND", "LOGICAL_OR"})
MAC_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D")
PRECISIONS = ("int8", "int16", "float", "int32")


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _names_of(enum_class) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def _flatbuffer(model) -> bytes:
    """The bytes of a ``.tflite`` given as a path or as bytes."""
    return bytes(model) if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()


def read_graph(model) -> dict:
    """The main subgraph of a ``.tflite`` (path or bytes) as plain rows.

    Returns ``{"ops": [...], "inputs": [tensor indices], "outputs": [tensor indices]}``; each op is
    ``{"index", "op", "inputs": [tensor], "outputs": [tensor], "options": {...}}`` and each tensor
    ``{"index", "name", "dtype", "shape", "constant"}`` (``constant``: it has data in the file), and
    ``block_size`` for a tensor quantized with one scale per block of that many weights.
    Optional inputs (index -1) are left out.

    Raises:
        ArtifactError: the bytes are not a TFLite flatbuffer.
    """
    schema = _schema()
    data = _flatbuffer(model)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ArtifactError(f"{model if not isinstance(model, (bytes, bytearray)) else 'bytes'}: not a "
                            f"TFLite flatbuffer (file identifier {data[4:8]!r}, expected b'TFL3')")
    root = schema.Model.GetRootAs(data, 0)
    op_names = _names_of(schema.BuiltinOperator)
    type_names = {value: name.lower() for value, name in _names_of(schema.TensorType).items()}
    codes = []
    for position in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(position)
        # Builtin codes above 127 live in BuiltinCode; the deprecated int8 field caps at 127.
        number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        codes.append(op_names.get(number, f"BUILTIN_{number}") if number != schema.BuiltinOperator.CUSTOM
                     else (code.CustomCode() or b"CUSTOM").decode())
    graph = root.Subgraphs(0)

    def tensor(index: int) -> dict:
        item = graph.Tensors(index)
        buffer = root.Buffers(item.Buffer()) if item.Buffer() < root.BuffersLength() else None
        constant = buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0)
        row = {"index": index, "name": (item.Name() or b"").decode(), "dtype": type_names.get(item.Type(), "?"),
               "shape": [int(d) for d in item.ShapeAsNumpy()] if item.ShapeLength() else [],
               "constant": bool(constant)}
        quantization = item.Quantization()
        if quantization is not None and quantization.DetailsType() == schema.QuantizationDetails.BlockwiseQuantization:
            details = schema.BlockwiseQuantization()
            details.Init(quantization.Details().Bytes, quantization.Details().Pos)
            row["block_size"] = int(details.BlockSize())  # one scale per this many weights
        return row

    ops = []
    for position in range(graph.OperatorsLength()):
        op = graph.Operators(position)
        name = codes[op.OpcodeIndex()]
        options = {}
        if name == "BATCH_MATMUL" and op.BuiltinOptions() is not None:
            matmul = schema.BatchMatMulOptions()
            matmul.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            options = {"adj_x": bool(matmul.AdjX()), "adj_y": bool(matmul.AdjY())}
        inputs = op.InputsAsNumpy() if op.InputsLength() else np.zeros(0, np.int32)
        outputs = op.OutputsAsNumpy() if op.OutputsLength() else np.zeros(0, np.int32)
        ops.append({"index": position, "op": name, "options": options,
                    "inputs": [tensor(int(i)) for i in inputs if int(i) >= 0],
                    "outputs": [tensor(int(i)) for i in outputs if int(i) >= 0]})
    return {"ops": ops, "inputs": [int(i) for i in graph.InputsAsNumpy()],
            "outputs": [int(i) for i in graph.OutputsAsNumpy()]}


def macs(op: dict) -> int:
    """Multiply-accumulates of one op row from :func:`read_graph` (0 for ops other than ``MAC_OPS``)."""
    if op["op"] not in MAC_OPS or not op["outputs"] or len(op["inputs"]) < 2:
        return 0
    output_elements = int(np.prod(op["outputs"][0]["shape"] or [0]))
    first, second = op["inputs"][0]["shape"], op["inputs"][1]["shape"]
    if op["op"] == "FULLY_CONNECTED":  # weights [units, depth]
        depth = second[-1] if second else 0
    elif op["op"] == "BATCH_MATMUL":  # [..., M, K] x [..., K, N]; adj_x transposes the first
        depth = (first[-2] if op["options"].get("adj_x") else first[-1]) if len(first) >= 2 else 0
    elif op["op"] == "CONV_2D":  # filter [out, h, w, in]
        depth = int(np.prod(second[1:])) if len(second) == 4 else 0
    else:  # DEPTHWISE_CONV_2D filter [1, h, w, out]: one input channel per output
        depth = int(np.prod(second[1:3])) if len(second) == 4 else 0
    return output_elements * int(depth)


def precision_of(op: dict) -> str:
    """``float`` if any non-constant tensor of the op is float, else ``int16`` or ``int8`` by its widest
    non-constant integer activation, else ``int32`` (index and shape ops)."""
    types = {t["dtype"] for t in op["inputs"] + op["outputs"] if not t["constant"]}
    if types & set(FLOAT_TYPES):
        return "float"
    if "int16" in types:
        return "int16"
    if "int8" in types:
        return "int8"
    return "int32"


def _offence(op: dict, graph_inputs: set, graph_outputs: set) -> str | None:
    """Why ``op`` breaks integer-only execution, or None."""
    float_inputs = [t for t in op["inputs"] if t["dtype"] in FLOAT_TYPES]
    float_outputs = [t for t in op["outputs"] if t["dtype"] in FLOAT_TYPES]
    if op["op"] == "QUANTIZE" and not float_outputs and all(t["index"] in graph_inputs for t in float_inputs):
        return None  # float input converted at the edge
    if op["op"] == "DEQUANTIZE" and not any(t["dtype"] in FLOAT_TYPES for t in op["inputs"]) \
            and all(t["index"] in graph_outputs for t in float_outputs):
        return None  # float output converted at the edge
    if float_inputs or float_outputs:
        named = ", ".join(f"{t['name']} ({t['dtype']})" for t in float_inputs + float_outputs)
        return f"float tensors: {named}"
    if op["op"] not in INDEX_OPS:
        wide = [t for t in op["inputs"] + op["outputs"]
                if t["dtype"] in INDEX_TYPES and not t["constant"] and t["index"] not in graph_inputs]
        if wide:
            named = ", ".join(f"{t['name']} ({t['dtype']})" for t in wide)
            return f"{wide[0]['dtype']} activations outside index ops: {named}"
    return None


def integer_report(model) -> dict:
    """Check from the graph whether an artifact runs integer-only, and how its compute splits by precision.

    Args:
        model: a ``.tflite`` path or its bytes.

    Returns:
        ``{"integer_only": bool, "offenders": [...], "precision": {op type: {precision: {"ops", "mac_share"}}},
        "mac_share": {precision: share of all MACs}, "macs": total}``. Each offender is ``{"index", "op",
        "reason", "inputs": ["name:dtype"], "outputs": [...]}`` in execution order; shares are in [0, 1].
    """
    graph = read_graph(model)
    graph_inputs, graph_outputs = set(graph["inputs"]), set(graph["outputs"])
    offenders = []
    table: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    by_precision: collections.Counter = collections.Counter()
    counts = [(op, precision_of(op), macs(op)) for op in graph["ops"]]
    total = sum(value for _, _, value in counts)
    for op, precision, value in counts:
        reason = _offence(op, graph_inputs, graph_outputs)
        if reason:
            offenders.append({
                "index": op["index"], "op": op["op"], "reason": reason,
                "inputs": [f"{t['name']}:{t['dtype']}" for t in op["inputs"]],
                "outputs": [f"{t['name']}:{t['dtype']}" for t in op["outputs"]]})
        cell = table[op["op"]].setdefault(precision, {"ops": 0, "macs": 0})
        cell["ops"] += 1
        cell["macs"] += value
        by_precision[precision] += value
    precision_table = {
        name: {precision: {"ops": cell["ops"], "mac_share": round(cell["macs"] / total, 6) if total else 0.0}
               for precision, cell in sorted(cells.items(), key=lambda item: PRECISIONS.index(item[0]))}
        for name, cells in sorted(table.items())}
    return {"integer_only": not offenders, "offenders": offenders, "precision": precision_table,
            "mac_share": {precision: round(by_precision[precision] / total, 6) if total else 0.0
                          for precision in PRECISIONS},
            "macs": int(total)}


def weight_zeros(model) -> dict:
    """Zeros among the constant weights of the FULLY_CONNECTED ops of a ``.tflite`` (path or bytes), as
    stored (int8 after quantization: a pruned weight must still be exactly 0 there, which symmetric
    weight quantization keeps). ``{"weights": count, "zeros": count, "zero_fraction": share}``."""
    schema = _schema()
    data = _flatbuffer(model)
    root = schema.Model.GetRootAs(data, 0)
    graph = root.Subgraphs(0)
    dtypes = {schema.TensorType.INT8: np.int8, schema.TensorType.FLOAT32: np.float32,
              schema.TensorType.FLOAT16: np.float16, schema.TensorType.INT16: np.int16}
    weights = zeros = 0
    for op in read_graph(data)["ops"]:
        if op["op"] != "FULLY_CONNECTED" or len(op["inputs"]) < 2 or not op["inputs"][1]["constant"]:
            continue
        item = graph.Tensors(op["inputs"][1]["index"])
        dtype = dtypes.get(item.Type())
        buffer = root.Buffers(item.Buffer())
        if dtype is None or buffer.DataLength() == 0:  # another type, or data outside the flatbuffer
            continue
        values = buffer.DataAsNumpy().view(dtype)
        weights += values.size
        zeros += int((values == 0).sum())
    return {"weights": int(weights), "zeros": int(zeros), "zero_fraction": round(zeros / weights, 6) if weights else 0.0}


def fully_connected_steps(model, side: str = "input") -> list[float]:
    """The quantization step (scale) of every FULLY_CONNECTED op's activation ``side`` (``"input"`` or
    ``"output"``) in a ``.tflite`` (path or bytes), in op order; float (unquantized) tensors are left out."""
    if side not in ("input", "output"):
        raise ValueError(f"side={side!r}: must be 'input' or 'output'")
    schema = _schema()
    data = _flatbuffer(model)
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    steps = []
    for op in read_graph(data)["ops"]:
        tensors = op["inputs"] if side == "input" else op["outputs"]
        if op["op"] != "FULLY_CONNECTED" or not tensors:
            continue
        quantization = graph.Tensors(tensors[0]["index"]).Quantization()
        if quantization is not None and quantization.ScaleLength():
            steps.append(float(quantization.Scale(0)))
    return steps


def tensor_steps(model) -> dict[str, float]:
    """``{tensor name: quantization step}`` of every per-tensor quantized tensor of a ``.tflite`` (path or
    bytes); per-channel weights and float tensors are left out."""
    schema = _schema()
    data = _flatbuffer(model)
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    steps = {}
    for index in range(graph.TensorsLength()):
        item = graph.Tensors(index)
        quantization = item.Quantization()
        if quantization is not None and quantization.ScaleLength() == 1:
            steps[(item.Name() or b"").decode()] = float(quantization.Scale(0))
    return steps


def record_fields(model, limit: int = 20) -> dict:
    """``{"integer_only", "integer_check"}`` for an artifact record or manifest: the verdict, the first
    ``limit`` offenders, their count, the precision table and the MAC shares of :func:`integer_report`, and
    the zeros among the FULLY_CONNECTED weights (:func:`weight_zeros`: a pruned artifact keeps its sparsity)."""
    report = integer_report(model)
    return {"integer_only": report["integer_only"],
            "integer_check": {"offenders": report["offenders"][:limit], "offender_count": len(report["offenders"]),
                              "precision": report["precision"], "mac_share": report["mac_share"],
                              "macs": report["macs"], "fully_connected_weight_zeros": weight_zeros(model)}}


def format_offenders(report: dict, limit: int = 10) -> str:
    """One line per offending op (the first ``limit``), for error messages and logs."""
    lines = [f"#{item['index']} {item['op']}: {item['reason']}" for item in report["offenders"][:limit]]
    more = len(report["offenders"]) - limit
    if more > 0:
        lines.append(f"... and {more} more")
    return "\n".join(lines)
