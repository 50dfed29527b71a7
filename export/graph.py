"""ONNX graph helpers of the exporter: node counts, clean-up, graph I/O against an engine spec."""

from __future__ import annotations

import contextlib
from collections import Counter

import onnx

from gligen_rt.engines import spec as S

_ONNX_DTYPES = {"float32": onnx.TensorProto.FLOAT, "int32": onnx.TensorProto.INT32}
# Nodes that carry no computation; `compute_nodes` leaves them out.
_BOOKKEEPING_OPS = frozenset({"Constant", "Identity"})


def node_count(model: onnx.ModelProto) -> int:
    """Nodes of the main graph (Constants included: what a parser sees)."""
    return len(model.graph.node)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """{op_type: count} of the main graph, most frequent first."""
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


def compute_nodes(model: onnx.ModelProto) -> int:
    """Nodes that are neither Constant nor Identity."""
    return sum(n.op_type not in _BOOKKEEPING_OPS for n in model.graph.node)


def drop_initializer_identities(model: onnx.ModelProto) -> int:
    """Remove ``Identity`` nodes that only alias an initializer (the TorchScript exporter emits them
    for weights with equal values); their users read the initializer directly. Returns the count.

    Such aliases would also make the FP16 converter cast a weight that only FP32 nodes use.
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    alias = {
        n.output[0]: n.input[0]
        for n in g.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    }
    if not alias:
        return 0
    keep = [n for n in g.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias)]
    for n in keep:
        for i, x in enumerate(n.input):
            if x in alias:
                n.input[i] = alias[x]
    del g.node[:]
    g.node.extend(keep)
    return len(alias)


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the weights held in the proto (raw or typed fields)."""
    total = 0
    for t in model.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            n = 1
            for d in t.dims:
                n *= d
            total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.HasField("t"):
                    total += len(a.t.raw_data)
    return total


def stamp_io(model: onnx.ModelProto, spec: S.EngineSpec) -> None:
    """Name the graph's I/O dims as the spec does: a dynamic axis gets the spec's symbol as its
    ``dim_param`` (the dynamo exporter writes its own names), a fixed axis the spec's value where
    the exporter left it symbolic (TorchScript names output dims after the op that made them).
    A dim the graph already fixes is left alone, so `check_io` reports a conflicting value.
    The values are checked against real outputs by the parity check."""
    fixed = _static_values(spec)
    for vi, t in _io_pairs(model, spec):
        shape = vi.type.tensor_type.shape
        if len(shape.dim) != len(t.dims):
            continue  # check_io reports it
        for dim, want in zip(shape.dim, t.dims):
            if isinstance(want, str) and _is_dynamic(spec, want):
                dim.Clear()
                dim.dim_param = want
            elif not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = want if isinstance(want, int) else fixed[want]


def _static_values(spec: S.EngineSpec) -> dict[str, int]:
    """Values of the symbols the envelope fixes (min = max)."""
    out = {}
    for sym in S.SYMBOLS:
        with contextlib.suppress(ValueError):
            r = spec.envelope.range_of(sym)
            if r[0] == r[2]:
                out[sym] = r[0]
    return out


def _is_dynamic(spec: S.EngineSpec, symbol: str) -> bool:
    r = spec.envelope.range_of(symbol)
    return r[0] != r[2]


def _io_pairs(model: onnx.ModelProto, spec: S.EngineSpec) -> list[tuple[onnx.ValueInfoProto, S.TensorSpec]]:
    inits = {i.name for i in model.graph.initializer}
    graph_in = [i for i in model.graph.input if i.name not in inits]
    return list(zip(graph_in, spec.inputs)) + list(zip(model.graph.output, spec.outputs))


def check_io(model: onnx.ModelProto, spec: S.EngineSpec) -> list[str]:
    """Differences between the graph's inputs/outputs and the spec (empty when they agree).

    Checked: names and order, element types, ranks, fixed dims (values) and symbolic dims (a
    ``dim_param`` named as the spec's symbol where the envelope gives it a range, else the value).
    """
    problems: list[str] = []
    inits = {i.name for i in model.graph.initializer}
    got_in = [i.name for i in model.graph.input if i.name not in inits]
    got_out = [o.name for o in model.graph.output]
    if got_in != list(spec.input_names):
        problems.append(f"inputs {got_in} != spec {list(spec.input_names)}")
    if got_out != list(spec.output_names):
        problems.append(f"outputs {got_out} != spec {list(spec.output_names)}")
    values = _static_values(spec)
    for vi, t in _io_pairs(model, spec):
        tt = vi.type.tensor_type
        if tt.elem_type != _ONNX_DTYPES[t.dtype]:
            got = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            problems.append(f"{t.name}: dtype {got} != spec {t.dtype}")
        dims = list(tt.shape.dim)
        if len(dims) != len(t.dims):
            problems.append(f"{t.name}: rank {len(dims)} != spec {len(t.dims)}")
            continue
        for axis, (d, want) in enumerate(zip(dims, t.dims)):
            if isinstance(want, str) and _is_dynamic(spec, want):
                if d.dim_param != want:
                    problems.append(f"{t.name}[{axis}]: {d.dim_param or d.dim_value} != spec {want!r}")
            else:
                value = want if isinstance(want, int) else values[want]
                if d.dim_value != value:
                    problems.append(f"{t.name}[{axis}]: {d.dim_param or d.dim_value} != spec {value}")
    return problems
