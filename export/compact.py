"""Lossless size reduction of an exported text encoder: the token-embedding table stored as FP16.

CLIP's vocabulary makes the token-embedding table the largest tensor of a small text encoder
(49408 x 64 floats, 12.6 MB of a 13 MB graph for the tiny model). When every value of that table
is exactly representable in FP16 (true for weights loaded from FP16 safetensors, as the packaged
tiny model's are), the table is stored as FP16 and a Cast to FP32 follows the Gather: the graph
computes the same numbers bit for bit, in half the bytes, on every backend (Gather and Cast on
FP16 data are supported by ONNX Runtime, OpenVINO and TensorRT).

A table that is not exactly FP16 is left as it is: this pass never changes a result.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

TEXT_ENCODER = "text_encoder"
MIN_ROWS = 1000  # a Gather table with fewer rows is not a vocabulary (positions, small lookups)


def store_token_embedding_fp16(engine_dir: str | os.PathLike[str], engine: str = TEXT_ENCODER) -> bool:
    """Rewrite ``engine_dir/<engine>.onnx`` with its token-embedding table in FP16 (see the module
    docstring) and update the engine's manifest hashes. Returns whether the graph changed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from gligen_rt.engines.manifest import (
        atomic_output,
        load_manifest,
        manifest_path_for,
        onnx_sha256,
        write_manifest,
    )

    path = Path(engine_dir) / f"{engine}.onnx"
    if Path(str(path) + ".data").exists():
        return False  # weights in external data: not the small-model case this pass is for
    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    changed = 0
    for node in list(graph.node):
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        table = inits[node.input[0]]
        if table.data_type != TensorProto.FLOAT or len(table.dims) != 2 or table.dims[0] < MIN_ROWS:
            continue
        values = numpy_helper.to_array(table)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            continue  # not exactly FP16: keep FP32
        table.CopyFrom(numpy_helper.from_array(half, table.name))
        out = node.output[0]
        node.output[0] = f"{out}_fp16"
        cast = helper.make_node(
            "Cast", [node.output[0]], [out], to=TensorProto.FLOAT, name=f"{node.name}_to_fp32"
        )
        position = list(graph.node).index(node)
        graph.node.insert(position + 1, cast)
        changed += 1
    if not changed:
        return False
    onnx.checker.check_model(model)
    with atomic_output(path) as tmp:
        onnx.save(model, str(tmp))
    manifest_file = manifest_path_for(path)
    if manifest_file.is_file():
        manifest = load_manifest(manifest_file)
        digest = onnx_sha256(path)
        builder = dict(manifest.builder)
        counts = dict(builder.get("op_counts") or {})
        counts["Cast"] = counts.get("Cast", 0) + changed
        builder.update(op_counts=counts, nodes=len(graph.node), token_embedding="fp16")
        write_manifest(
            manifest_file,
            dataclasses.replace(
                manifest,
                artifact_sha256=digest,
                onnx_sha256=digest,
                artifact_size=path.stat().st_size,
                builder=builder,
            ),
        )
    return True
