"""FP16 graphs that are safe: strongly typed FP16 with FP32 islands where FP16 would break.

`convert_fp16(src, dst)` turns an exported FP32 ONNX file into a strongly typed FP16 one (the
discipline of TensorRT strongly typed networks, TensorRT-RTX and TensorRT 11: every tensor's type is
in the graph) with ONNX Runtime's float16 converter:

- engine I/O stays float32 (int32 ids untouched): Casts at the boundary (``keep_io_types``);
- ops that must stay FP32 (`FP32_OPS`): normalisation (LayerNorm, GroupNorm's InstanceNormalization,
  and their decomposed forms ReduceMean/Pow/Sqrt), the L2 renormalisation of image features, and
  sin/cos; their sums of squares overflow FP16's 65504 on real activations and sin/cos lose their
  argument;
- the timestep path (`fp32_cone`): every node from the ``timestep`` input to the sin/cos of
  diffusers' time projection stays FP32 (the input is never rounded either): the arguments reach
  ~1000 rad, where FP16's spacing is 0.5 rad. The sin/cos values (in [-1, 1]) go on in FP16, as in
  diffusers;
- Softmax stays FP16 on purpose: the softmax scale is folded into the queries (export/fuse.py, and
  the exporter's pre-scaled q/k for SD's attention) so the logits are small, and fused attention
  kernels (TensorRT MHA, cuDNN/flash) accumulate it in FP32 internally; blocking it would put Casts
  between the attention MatMuls and break those fusions. Pass ``extra_fp32_ops=("Softmax",)`` to keep it.

The grounding engine (Fourier embedding with arguments up to 56 rad, and the grounding tokenizer) is
never converted: the exporter keeps it FP32 (see api.py).

Large models (> 2 GB) work: shape inference runs on the file (``infer_shapes_path``), never on the
in-memory proto, and the converter is told not to run it again.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import onnx

log = logging.getLogger(__name__)

FP32_OPS: tuple[str, ...] = (
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "ReduceMean",
    "ReduceL2",
    "ReduceSumSquare",
    "Pow",
    "Sqrt",
    "Sin",
    "Cos",
)
# Regions kept FP32 as a whole: (graph input, name fragment of the nodes that end the region).
# Regions kept FP32 as a whole: (graph input, op types that end the region), see `fp32_cone`.
FP32_CONES: tuple[tuple[str, tuple[str, ...]], ...] = (("timestep", ("Sin", "Cos")),)


def name_nodes(graph: onnx.GraphProto) -> None:
    """Give every node a unique, non-empty name (the converter blocks nodes by name)."""
    seen: set[str] = set()
    for i, n in enumerate(graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.name or n.op_type}__{i}"
        seen.add(n.name)


def fp32_cone(graph: onnx.GraphProto, input_name: str, end_ops: Sequence[str] = ("Sin", "Cos")) -> set[str]:
    """Names of the nodes on every path from graph input ``input_name`` to the nodes of type
    ``end_ops`` that depend on it, those nodes included (with the Constants that feed the region).

    For the UNet's ``timestep``: the broadcast, the product with the frequencies and sin/cos of
    diffusers' time projection; its sin/cos values (in [-1, 1]) are what leaves the region.
    Empty when the graph has no such input. Exporter-independent (no node names are matched).
    """
    if input_name not in {i.name for i in graph.input}:
        return set()
    nodes = list(graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in nodes:
        for i in n.input:
            consumers[i].append(n)

    below: set[str] = set()  # descendants of the input
    stack = [input_name]
    while stack:
        for n in consumers.get(stack.pop(), ()):
            if n.name not in below:
                below.add(n.name)
                stack.extend(n.output)
    ends = [n for n in nodes if n.op_type in end_ops and n.name in below]
    above: set[str] = set()  # ancestors of the end nodes
    stack = [i for n in ends for i in n.input]
    while stack:
        n = producer.get(stack.pop())
        if n is not None and n.name not in above:
            above.add(n.name)
            stack.extend(n.input)
    region = (below & above) | {n.name for n in ends}
    feeding = {  # Constants feeding the region belong to it (their values must stay FP32 too)
        producer[i].name
        for n in nodes
        if n.name in region
        for i in n.input
        if i in producer and producer[i].op_type == "Constant"
    }
    return region | feeding


def convert_fp16(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    external_data: bool,
    extra_fp32_ops: Sequence[str] = (),
    cones: Iterable[tuple[str, tuple[str, ...]]] = FP32_CONES,
) -> dict[str, Any]:
    """Write the strongly typed FP16 version of the FP32 graph ``src`` to ``dst``.

    Args:
        src: FP32 .onnx (its .onnx.data, if any, beside it).
        dst: output .onnx; with ``external_data`` its weights go to ``<dst name>.data`` beside it.
        extra_fp32_ops: op types to keep FP32 in addition to `FP32_OPS`.
        cones: (input, end op types) regions kept FP32 (`fp32_cone`).

    Returns:
        what was kept FP32: {"fp32_ops": [...], "fp32_nodes": n, "casts": n} for the manifest.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    src, dst = Path(src), Path(dst)
    inferred = src.with_name(src.stem + ".inferred.onnx")
    try:
        onnx.shape_inference.infer_shapes_path(str(src), str(inferred))
        model = onnx.load(str(inferred), load_external_data=True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            inferred.unlink()
    ops = list(dict.fromkeys([*FP32_OPS, *extra_fp32_ops]))
    name_nodes(model.graph)
    keep: set[str] = set()
    for input_name, end_ops in cones:
        keep |= fp32_cone(model.graph, input_name, end_ops)
    casts_before = sum(n.op_type == "Cast" for n in model.graph.node)
    converter_log = logging.getLogger("onnxruntime.transformers.float16")
    level = converter_log.level
    converter_log.setLevel(logging.WARNING)  # it logs whole node lists at INFO
    try:
        model = convert_float_to_float16(
            model,
            keep_io_types=True,
            disable_shape_infer=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + ops,
            node_block_list=sorted(keep),
        )
    finally:
        converter_log.setLevel(level)
    casts = sum(n.op_type == "Cast" for n in model.graph.node) - casts_before
    folded = fold_cast_round_trips(model.graph) + drop_duplicate_nodes(model.graph)
    topological_sort(model.graph)  # the converter appends its Casts at the end
    save_model(model, dst, external_data=external_data)
    log.debug(
        "fp16: %s -> %s, %d FP32 nodes kept by region, %d casts added", src.name, dst.name, len(keep), casts
    )
    return {"fp32_ops": ops, "fp32_region_nodes": len(keep), "casts_added": casts - folded}


def drop_duplicate_nodes(graph: onnx.GraphProto) -> int:
    """Keep one of several identical nodes that write the same output (some versions of the float16
    converter insert the same Cast once per consumer, which breaks SSA). Returns how many were
    dropped; ValueError when two *different* nodes write one output."""
    seen: dict[str, onnx.NodeProto] = {}
    dropped: list[onnx.NodeProto] = []
    for n in graph.node:
        first = next((seen[o] for o in n.output if o in seen), None)
        if first is None:
            seen.update({o: n for o in n.output})
            continue
        same = (first.op_type, list(first.input), list(first.output), list(first.attribute)) == (
            n.op_type,
            list(n.input),
            list(n.output),
            list(n.attribute),
        )
        if not same:
            raise ValueError(f"two different nodes write {n.output[0]!r}: {first.name!r} and {n.name!r}")
        dropped.append(n)
    for n in dropped:
        graph.node.remove(n)
    return len(dropped)


def fold_cast_round_trips(graph: onnx.GraphProto) -> int:
    """Remove FP32 -> FP16 -> FP32 Cast pairs (the converter casts every float input to FP16, then
    back for FP32 nodes): FP32 consumers read the FP32 tensor itself, so e.g. the ``timestep``
    input reaches the FP32 time embedding unrounded. Casts left without consumers are removed.
    Returns the number of Cast nodes removed."""
    fp32, fp16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}

    def cast_to(n: onnx.NodeProto) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    alias: dict[str, str] = {}
    for n in graph.node:
        if cast_to(n) != fp32 or n.output[0] in outputs:
            continue
        first = producer.get(n.input[0])
        if first is not None and cast_to(first) == fp16 and types.get(first.input[0]) == fp32:
            alias[n.output[0]] = first.input[0]
    for n in graph.node:
        for i, x in enumerate(n.input):
            if x in alias:
                n.input[i] = alias[x]
    removed = 0
    while True:  # drop Casts nobody reads
        used = {x for n in graph.node for x in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            return removed
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs
    (stable: keeps the existing order where it is already valid). Raises ValueError on a cycle."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in n.input if x in producer} for n in nodes]
    users: dict[int, list[int]] = collections.defaultdict(list)
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, p in enumerate(pending) if p == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError("the graph has a cycle")
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], *, external_data: bool) -> None:
    """Save ``model`` to ``path``; with ``external_data`` every weight goes to ``<name>.data`` beside it."""
    path = Path(path)
    if external_data:
        data = path.with_name(path.name + ".data")
        with contextlib.suppress(FileNotFoundError):
            data.unlink()  # onnx appends to an existing data file
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))
