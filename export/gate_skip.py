"""One UNet graph for both phases: every fuser behind an ONNX ``If`` on ``gate != 0``.

At gate 0 a GLIGEN fuser returns its input unchanged (``x + 0 * attn + 0 * ff``), yet a graph that
multiplies by the gate still computes all of it (~26% of an SD-1.4 UNet's FLOPs). A separate
``unet_plain`` engine avoids that work but holds a second copy of the UNet weights. This pass
rewrites the grounded ``unet`` graph so that one engine serves both phases:

    cond = Not(Equal(Reshape(gate, []), 0))              once, in the main graph
    y    = If(cond, then: <the fuser's own nodes> -> y', else: Identity(x))

The branches read outer-scope values (x, tokens, the gate, initializers), so no weight is copied and
the fuser's nodes move into the then-branch unchanged (the fused MatMul-Softmax-MatMul or
``Attention`` pattern of export/fuse.py stays intact). At gate 0 the result is exactly ``x``, which
equals the reference up to the ``0 * finite`` terms the original graph adds.

How fusers are found (exporter-independent otherwise):

- a node belongs to fuser ``S`` when its name contains ``S/`` with ``S`` ending in ``/fuser``
  (TorchScript exporter: ``/unet/down_blocks.0/attentions.0/transformer_blocks.0/fuser/...``), or
  when its ``pkg.torch.onnx.name_scopes`` metadata holds a scope ending in ``.fuser`` (dynamo);
- its output ``y`` is the one value of those nodes read outside them (a Cast of it does not count:
  the FP16 converter names the Cast after the fuser's output with the fuser's prefix too);
- the branch holds the nodes of that scope that ``y`` depends on, plus every node between two of them
  (e.g. FP16 Casts around the LayerNorm islands, whatever their names), plus outside nodes whose only
  readers are in the branch (work done only for the fuser);
- ``x`` is the outside input of the residual chain ``y = Add(Add(x, .), .)``.

Anything else (a second value leaving the fuser, no residual chain) raises `GateSkipError`: the
pass never guesses.

The model may be loaded without its external data (``onnx.load(path, load_external_data=False)``):
initializers are never touched, so the result can be saved beside the original ``.onnx.data``.
"""

from __future__ import annotations

import ast
import copy
import heapq
import logging
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import onnx
from onnx import helper

log = logging.getLogger(__name__)

GATE_INPUT = "gate"
PREFIX = "gate_skip"  # names of the values and nodes this pass adds
_TS_SCOPE = re.compile(r"^(.*?/fuser)/")  # TorchScript node names
_DYNAMO_KEY = "pkg.torch.onnx.name_scopes"

ScopeOf = Callable[[onnx.NodeProto], "str | None"]


class GateSkipError(ValueError):
    """The graph does not have the structure the pass needs (no gate input, a fuser with several
    outputs, no residual chain): nothing was changed."""


@dataclass(frozen=True)
class FuserBranch:
    """One fuser put behind an If."""

    scope: str
    x: str  # the fuser's input (else-branch result)
    y: str  # the fuser's output (now the If's output)
    nodes: int  # nodes moved into the then-branch
    hoisted_in: int  # of those, nodes without the fuser's name (Casts between, exclusive producers)


@dataclass(frozen=True)
class GateSkipReport:
    """Node counts before and after the pass."""

    nodes_before: int  # main-graph nodes of the input model
    nodes_after: int  # main-graph nodes of the result (If nodes and the condition included)
    if_nodes: int  # If nodes in the result's main graph
    branch_nodes: int  # nodes inside every then-branch together
    fusers: tuple[FuserBranch, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """One line for logs and manifests."""
        return (
            f"gate skip: {len(self.fusers)} fusers behind If; main graph {self.nodes_before} -> "
            f"{self.nodes_after} nodes ({self.if_nodes} If), {self.branch_nodes} nodes in then-branches"
        )

    def to_dict(self) -> dict[str, int]:
        """The counts, JSON-ready (for an engine manifest's ``builder`` field)."""
        return {
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "if_nodes": self.if_nodes,
            "branch_nodes": self.branch_nodes,
            "fusers": len(self.fusers),
        }


def fuser_scope(node: onnx.NodeProto) -> str | None:
    """The fuser a node was exported from (TorchScript name or dynamo name-scope metadata), or None."""
    m = _TS_SCOPE.match(node.name)
    if m:
        return m.group(1)
    for p in node.metadata_props:
        if p.key == _DYNAMO_KEY:
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            return next((s for s in scopes if isinstance(s, str) and s.endswith(".fuser")), None)
    return None


def skip_fusers_at_gate_zero(
    model: onnx.ModelProto,
    *,
    gate_input: str = GATE_INPUT,
    scope_of: ScopeOf = fuser_scope,
    inplace: bool = False,
) -> onnx.ModelProto:
    """The UNet graph with every fuser behind ``If(gate != 0)`` (see the module docstring).

    Args:
        model: an exported grounded UNet (FP32 or strongly typed FP16, either exporter); may be
            loaded without external data.
        gate_input: the graph input holding the gate (shape (1,) or ()).
        scope_of: node -> fuser scope name or None (default: `fuser_scope`).
        inplace: rewrite ``model`` itself (saves a copy of a large proto) instead of a copy.

    Raises:
        GateSkipError: no gate input, no fuser, or a fuser whose boundary is not one value in, one out.
    """
    return skip_fusers(model, gate_input=gate_input, scope_of=scope_of, inplace=inplace)[0]


def skip_fusers(
    model: onnx.ModelProto,
    *,
    gate_input: str = GATE_INPUT,
    scope_of: ScopeOf = fuser_scope,
    inplace: bool = False,
) -> tuple[onnx.ModelProto, GateSkipReport]:
    """`skip_fusers_at_gate_zero` and its `GateSkipReport`."""
    out = model if inplace else copy.deepcopy(model)
    g = out.graph
    nodes_before = len(g.node)
    gate = next((i for i in g.input if i.name == gate_input), None)
    if gate is None:
        raise GateSkipError(f"the graph has no input {gate_input!r}: not a grounded UNet")
    if any(n.op_type == "If" and n.name.startswith(f"{PREFIX}/") for n in g.node):
        raise GateSkipError("the graph already has its fusers behind If (the pass ran before)")

    scopes: dict[str, list[int]] = {}
    for i, n in enumerate(g.node):
        s = scope_of(n)
        if s is not None:
            scopes.setdefault(s, []).append(i)
    if not scopes:
        raise GateSkipError("no fuser nodes found (no node name or name scope ending in 'fuser')")

    types = _value_types(out)
    value_info = {v.name: v for v in g.value_info}
    graph = _Graph(g)
    cond = _condition_nodes(gate)
    branches: list[FuserBranch] = []
    replaced: dict[int, onnx.NodeProto] = {}  # index of the fuser's output node -> its If
    removed: set[int] = set()
    all_named = {i for idx in scopes.values() for i in idx}
    for scope, idx in scopes.items():
        named = set(idx)
        fb, members = _fuser_branch(graph, scope, named, removed | (all_named - named))
        then_nodes = [g.node[i] for i in sorted(members)]
        replaced[graph.producer[fb.y]] = _if_node(fb, then_nodes, types, value_info)
        removed |= members
        branches.append(fb)

    new_nodes = list(cond)
    for i, n in enumerate(g.node):
        if i in replaced:
            new_nodes.append(replaced[i])
        elif i not in removed:
            new_nodes.append(n)
    _topological_sort(new_nodes, {v.name for v in g.input} | {t.name for t in g.initializer})
    inner = {o for n in new_nodes if n.op_type == "If" for a in n.attribute for o in _produced(a.g)}
    kept_vi = [v for v in g.value_info if v.name not in inner]  # moved into their branches
    del g.value_info[:]
    g.value_info.extend(kept_vi)
    del g.node[:]
    g.node.extend(new_nodes)

    report = GateSkipReport(
        nodes_before=nodes_before,
        nodes_after=len(g.node),
        if_nodes=sum(n.op_type == "If" for n in g.node),
        branch_nodes=sum(fb.nodes for fb in branches),
        fusers=tuple(branches),
    )
    log.info("%s", report.summary())
    return out, report


def gate_skip_report(model: onnx.ModelProto) -> dict[str, int]:
    """Counts of any model: main-graph nodes, If nodes, nodes inside If branches (recursively)."""
    g = model.graph
    ifs = [n for n in g.node if n.op_type == "If"]
    return {
        "nodes": len(g.node),
        "if_nodes": len(ifs),
        "branch_nodes": sum(_count_nodes(a.g) for n in ifs for a in n.attribute if a.HasField("g")),
    }


# ---------------------------------------------------------------------------------------------
# Graph bookkeeping


class _Graph:
    """Producers and consumers of every value of the main graph (indices into ``graph.node``);
    a subgraph's outer-scope reads count as reads by its node."""

    def __init__(self, g: onnx.GraphProto) -> None:
        self.g = g
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(g.node):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for v in _reads(n):
                self.consumers.setdefault(v, []).append(i)
        self.graph_outputs = {o.name for o in g.output}
        self.inits = {t.name for t in g.initializer}

    def inputs(self, i: int) -> set[str]:
        return _reads(self.g.node[i])

    def outputs(self, i: int) -> list[str]:
        return [o for o in self.g.node[i].output if o]


def _reads(n: onnx.NodeProto) -> set[str]:
    """Values a node reads: its inputs and, for control flow, its subgraphs' outer-scope reads."""
    out = {x for x in n.input if x}
    for a in n.attribute:
        for sub in [a.g] if a.HasField("g") else list(a.graphs):
            out |= _outer_reads(sub)
    return out


def _outer_reads(g: onnx.GraphProto) -> set[str]:
    local = {v.name for v in g.input} | {t.name for t in g.initializer} | _produced(g)
    reads: set[str] = set()
    for n in g.node:
        reads |= _reads(n)
    return reads - local


def _produced(g: onnx.GraphProto) -> set[str]:
    return {o for n in g.node for o in n.output if o}


def _count_nodes(g: onnx.GraphProto) -> int:
    return sum(1 + sum(_count_nodes(a.g) for a in n.attribute if a.HasField("g")) for n in g.node)


def _fuser_branch(
    graph: _Graph, scope: str, named: set[int], taken: set[int]
) -> tuple[FuserBranch, set[int]]:
    """The fuser's boundary (x, y) and the node indices of its then-branch (``taken``: nodes of
    other fusers, never pulled in)."""
    outputs = _leaving(graph, named)
    # A Cast of a leaving value is not another output (the FP16 converter names the Cast after the
    # fuser's output like the fuser's own nodes); it stays outside the branch.
    roots = sorted(v for v in outputs if not _is_cast_of(graph.g.node[graph.producer[v]], outputs))
    if len(roots) != 1:
        raise GateSkipError(f"fuser {scope}: {len(roots)} output values {roots[:4]}, expected one")
    y = roots[0]
    # The fuser's nodes y depends on, plus every node between two of them.
    below = _descendants(graph, named)
    members = _ancestors(graph, graph.producer[y], within=below)
    if not members & named:
        raise GateSkipError(f"fuser {scope}: its output {y!r} depends on none of its nodes")
    x = _residual_input(graph, y, members)
    if x is None:
        raise GateSkipError(f"fuser {scope}: no residual chain y = Add(Add(x, .), .) ending in {y!r}")
    # x's producer stays outside (the else-branch reads x); nothing upstream of it is exclusive then.
    keep_out = taken | ({graph.producer[x]} if x in graph.producer else set())
    members |= _exclusive_producers(graph, members, keep_out)
    leaking = sorted(v for v in _leaving(graph, members) if v != y)
    if leaking:
        raise GateSkipError(f"fuser {scope}: values {leaking[:4]} are read outside the fuser")
    fb = FuserBranch(scope=scope, x=x, y=y, nodes=len(members), hoisted_in=len(members - named))
    return fb, members


def _is_cast_of(node: onnx.NodeProto, values: set[str]) -> bool:
    return node.op_type in ("Cast", "Identity") and node.input[0] in values


def _leaving(graph: _Graph, members: set[int]) -> set[str]:
    """Values produced by ``members`` and read by another node or as graph outputs."""
    out = set()
    for i in members:
        for v in graph.outputs(i):
            if v in graph.graph_outputs or any(c not in members for c in graph.consumers.get(v, ())):
                out.add(v)
    return out


def _descendants(graph: _Graph, start: set[int]) -> set[int]:
    """``start`` and every node reachable forward from it."""
    seen = set(start)
    todo = deque(start)
    while todo:
        i = todo.popleft()
        for v in graph.outputs(i):
            for c in graph.consumers.get(v, ()):
                if c not in seen:
                    seen.add(c)
                    todo.append(c)
    return seen


def _ancestors(graph: _Graph, end: int, within: set[int]) -> set[int]:
    """``end`` and the nodes of ``within`` it depends on through nodes of ``within``."""
    seen = {end}
    todo = deque([end])
    while todo:
        i = todo.popleft()
        for v in graph.inputs(i):
            p = graph.producer.get(v)
            if p is not None and p in within and p not in seen:
                seen.add(p)
                todo.append(p)
    return seen


def _exclusive_producers(graph: _Graph, members: set[int], taken: set[int]) -> set[int]:
    """Outside nodes all of whose outputs are read only by ``members`` (growing): work done only for
    the fuser, e.g. a Constant or a Cast of the tokens used by this fuser alone."""
    extra: set[int] = set()
    changed = True
    while changed:
        changed = False
        group = members | extra
        for i in list(group):
            for v in graph.inputs(i):
                p = graph.producer.get(v)
                if p is None or p in group or p in taken:
                    continue
                outs = graph.outputs(p)
                if all(
                    o not in graph.graph_outputs and all(c in group for c in graph.consumers.get(o, ()))
                    for o in outs
                ):
                    extra.add(p)
                    changed = True
    return extra


def _residual_input(graph: _Graph, y: str, members: set[int]) -> str | None:
    """x of ``y = Add(Add(x, a), b)``: follow Add inputs made by member Adds to the outside one."""
    v = y
    for _ in range(len(members)):
        p = graph.producer.get(v)
        if p is None or p not in members or graph.g.node[p].op_type != "Add":
            return None
        ins = list(graph.g.node[p].input)
        outside = [u for u in ins if graph.producer.get(u) not in members and u not in graph.inits]
        chain = [
            u
            for u in ins
            if graph.producer.get(u) in members and graph.g.node[graph.producer[u]].op_type == "Add"
        ]
        if len(outside) == 1 and not chain:
            return outside[0]
        if len(chain) != 1:
            return None
        v = chain[0]
    return None


# ---------------------------------------------------------------------------------------------
# New nodes


def _condition_nodes(gate: onnx.ValueInfoProto) -> list[onnx.NodeProto]:
    """``{PREFIX}/cond = Not(Equal(Reshape(gate, []), 0))``: a 0-d bool, computed once."""
    elem = gate.type.tensor_type.elem_type
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    return [
        helper.make_node(
            "Constant",
            [],
            [f"{PREFIX}/scalar_shape"],
            name=f"{PREFIX}/scalar_shape",
            value=helper.make_tensor(f"{PREFIX}/scalar_shape", onnx.TensorProto.INT64, [0], []),
        ),
        helper.make_node(
            "Constant",
            [],
            [f"{PREFIX}/zero"],
            name=f"{PREFIX}/zero",
            value=helper.make_tensor(f"{PREFIX}/zero", elem, [], [np_dtype.type(0)]),
        ),
        helper.make_node(
            "Reshape", [gate.name, f"{PREFIX}/scalar_shape"], [f"{PREFIX}/gate"], name=f"{PREFIX}/gate"
        ),
        helper.make_node(
            "Equal", [f"{PREFIX}/gate", f"{PREFIX}/zero"], [f"{PREFIX}/is_zero"], name=f"{PREFIX}/is_zero"
        ),
        helper.make_node("Not", [f"{PREFIX}/is_zero"], [f"{PREFIX}/cond"], name=f"{PREFIX}/cond"),
    ]


def _if_node(
    fb: FuserBranch,
    then_nodes: list[onnx.NodeProto],
    types: dict[str, onnx.TypeProto],
    value_info: dict[str, onnx.ValueInfoProto],
) -> onnx.NodeProto:
    """``fb.y = If(cond, then: then_nodes (their y renamed), else: Identity(fb.x))``; the main
    graph's value infos of the values made inside go with them into the then-branch."""
    tag = fb.scope.strip("/").replace("/", ".")
    inner_y = f"{PREFIX}/{tag}/then_out"
    else_y = f"{PREFIX}/{tag}/else_out"
    body = [copy.deepcopy(n) for n in then_nodes]
    for n in body:  # the If writes y; inside the branch it gets its own name (no shadowing)
        for k, o in enumerate(n.output):
            if o == fb.y:
                n.output[k] = inner_y
        for k, v in enumerate(n.input):
            if v == fb.y:
                n.input[k] = inner_y
    out_type = _output_type(types.get(fb.y) or types.get(fb.x))
    inner_vi = [value_info[o] for n in then_nodes for o in n.output if o in value_info and o != fb.y]
    then_g = helper.make_graph(body, f"{tag}.then", [], [_value_info(inner_y, out_type)], value_info=inner_vi)
    else_g = helper.make_graph(
        [helper.make_node("Identity", [fb.x], [else_y], name=f"{PREFIX}/{tag}/skip")],
        f"{tag}.else",
        [],
        [_value_info(else_y, out_type)],
    )
    return helper.make_node(
        "If", [f"{PREFIX}/cond"], [fb.y], name=f"{PREFIX}/{tag}", then_branch=then_g, else_branch=else_g
    )


def _output_type(t: onnx.TypeProto | None) -> onnx.TypeProto:
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.elem_type:
        raise GateSkipError("cannot infer the element type of a fuser's output")
    out = onnx.TypeProto()
    out.tensor_type.elem_type = t.tensor_type.elem_type
    if t.tensor_type.HasField("shape"):  # rank and dims as inferred (symbolic names dropped)
        for d in t.tensor_type.shape.dim:
            nd = out.tensor_type.shape.dim.add()
            if d.HasField("dim_value"):
                nd.dim_value = d.dim_value
    return out


def _value_info(name: str, t: onnx.TypeProto) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto()
    vi.name = name
    vi.type.CopyFrom(t)
    return vi


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Types of every value, by ONNX shape inference on a weightless skeleton of the graph
    (initializers become typed inputs), so large models and models without their data work."""
    g = model.graph
    skel = onnx.GraphProto()
    skel.name = g.name
    skel.node.extend(g.node)
    skel.input.extend(g.input)
    names = {i.name for i in g.input}
    for t in g.initializer:
        if t.name not in names:
            skel.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    skel.output.extend(g.output)
    skel.value_info.extend(g.value_info)
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.graph.CopyFrom(skel)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception as e:  # inference failing leaves only the exporter's own value infos
        log.warning("shape inference failed (%s): using the graph's value infos", str(e)[:200])
        inferred = m
    ig = inferred.graph
    return {v.name: v.type for v in [*ig.input, *ig.value_info, *ig.output]}


def _topological_sort(nodes: list[onnx.NodeProto], available: Iterable[str]) -> None:
    """Sort ``nodes`` in place so every value is produced before it is read, keeping the given
    order where it is already valid (Kahn's algorithm, smallest original index first)."""
    ready_values = set(available) | {""}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waiting: Counter[int] = Counter()
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for v in _reads(n):
            if v in ready_values or v not in producer:
                continue  # graph inputs, initializers (and names no node makes: left to the checker)
            waiting[i] += 1
            readers.setdefault(v, []).append(i)
    heap = [i for i in range(len(nodes)) if waiting[i] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        i = heapq.heappop(heap)
        order.append(i)
        for o in nodes[i].output:
            for r in readers.get(o, ()):
                waiting[r] -= 1
                if waiting[r] == 0:
                    heapq.heappush(heap, r)
    if len(order) != len(nodes):
        raise GateSkipError("the rewritten graph has a cycle (a fuser's boundary was misread)")
    nodes[:] = [nodes[i] for i in order]


__all__ = [
    "FuserBranch",
    "GateSkipError",
    "GateSkipReport",
    "fuser_scope",
    "gate_skip_report",
    "skip_fusers",
    "skip_fusers_at_gate_zero",
]
