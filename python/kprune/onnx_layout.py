"""Exact rewrites of an exported encoder graph that let onnxruntime's CPU optimiser pick fast kernels.

onnxruntime fuses each residual ``Add`` followed by ``LayerNormalization`` into its contrib
``SkipLayerNormalization``. On CPU (1.32) that kernel normalises each row in a scalar loop, several
times slower than the separate Add and LayerNormalization it replaces, and its cost does not shrink
when heads or neurons are pruned, so it eats much of a pruned model's gain (numbers and command in
benchmarks/RESULTS.md). The fusion only takes 3-D inputs. Two rewrites keep it away and fold the
biases into the matrix products:

* dense layers: ``MatMul(x, W)`` with a constant ``[K, N]`` weight followed by ``Add`` of a constant
  ``[N]`` bias becomes ``Reshape(x, [-1, K])``, ``Gemm`` (the bias added inside the GEMM) and a
  ``Reshape`` back to ``x``'s leading axes and ``N``;
* layer norms over the last axis run on the ``[-1, H]`` matrix of rows, between two Reshapes.

Reshape only relabels the axes of a contiguous tensor, so the results are the same numbers.
"""
from __future__ import annotations

import numpy as np


class _Graph:
    """Node list being rebuilt, with fresh names and the constants the new nodes need."""

    def __init__(self, graph):
        self.graph = graph
        self.constants = {t.name: t for t in graph.initializer}
        self.taken = {t.name for t in graph.initializer} | {v.name for v in graph.input}
        self.taken |= {name for node in graph.node for name in (*node.input, *node.output, node.name)}
        self.added, self.shared = [], {}

    def name(self, stem: str) -> str:
        index = len(self.taken)
        while f"kprune_{stem}_{index}" in self.taken:
            index += 1
        self.taken.add(f"kprune_{stem}_{index}")
        return f"kprune_{stem}_{index}"

    def int64s(self, stem: str, values: list[int]) -> str:
        """A constant int64 vector (one initializer per distinct value)."""
        from onnx import numpy_helper

        if tuple(values) not in self.shared:
            name = self.shared[tuple(values)] = self.name(stem)
            self.added.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return self.shared[tuple(values)]

    def dims(self, name: str) -> list[int] | None:
        tensor = self.constants.get(name)
        return None if tensor is None else list(tensor.dims)


def _readers(graph) -> dict[str, list]:
    """Per value, the nodes that read it (a graph output counts as a reader, ``None``)."""
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    for output in graph.output:
        readers.setdefault(output.name, []).append(None)
    return readers


def _bias_of(add, matmul_output: str, g: _Graph, width: int) -> str | None:
    """The constant ``[width]`` operand of ``add`` whose other operand is ``matmul_output``."""
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.input) != 2:
        return None
    other = add.input[1] if add.input[0] == matmul_output else add.input[0]
    if other == matmul_output or g.dims(other) != [width]:
        return None
    return other


def _dense(matmul, add, bias: str, g: _Graph) -> list:
    from onnx import helper

    x, weight = matmul.input
    k, n = g.dims(weight)
    rows, lead, out_shape, product = (g.name(s) for s in ("rows", "lead", "shape", "gemm"))
    return [helper.make_node("Reshape", [x, g.int64s("rows_shape", [-1, k])], [rows], name=g.name("reshape")),
            helper.make_node("Gemm", [rows, weight, bias], [product], name=matmul.name or g.name("gemm")),
            helper.make_node("Shape", [x], [lead], name=g.name("shape"), end=-1),
            helper.make_node("Concat", [lead, g.int64s("width", [n])], [out_shape], name=g.name("concat"), axis=0),
            helper.make_node("Reshape", [product, out_shape], list(add.output), name=add.name or g.name("reshape"))]


def _row_norm(node, g: _Graph) -> list | None:
    from onnx import helper

    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
    width = g.dims(node.input[1])
    if axis != -1 or width is None or len(width) != 1 or len(node.output) != 1:
        return None
    x = node.input[0]
    shape, rows, normed = g.name("shape"), g.name("rows"), g.name("normed")
    flat = helper.make_node("LayerNormalization", [rows, *node.input[1:]], [normed], name=node.name)
    flat.attribute.extend(node.attribute)
    return [helper.make_node("Shape", [x], [shape], name=g.name("shape")),
            helper.make_node("Reshape", [x, g.int64s("rows_shape", [-1, width[0]])], [rows], name=g.name("reshape")),
            flat,
            helper.make_node("Reshape", [normed, shape], list(node.output), name=g.name("reshape"))]


def rewrite_for_cpu(model) -> dict[str, int]:
    """Apply both rewrites to ``model`` (an ``onnx.ModelProto``, changed in place) and count them.

    Only the main graph, in the default ONNX domain, is touched; a MatMul whose product has another
    reader, or a weight or bias with a zero-sized axis, is left as it is.
    """
    graph = model.graph
    g, readers = _Graph(graph), _readers(graph)
    fused_add, kept, counts = {}, [], {"dense": 0, "layer_norm": 0}
    for node in graph.node:
        users = readers.get(node.output[0], []) if node.output else []
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and len(users) == 1 and users[0] is not None:
            weight = g.dims(node.input[1])
            if weight is not None and len(weight) == 2 and min(weight) > 0:
                bias = _bias_of(users[0], node.output[0], g, weight[1])
                if bias is not None:
                    fused_add[id(users[0])] = (node, bias)
                    continue
        kept.append(node)
    rebuilt, gone = [], {matmul.output[0] for matmul, _ in fused_add.values()}
    for node in kept:
        if id(node) in fused_add:
            matmul, bias = fused_add[id(node)]
            rebuilt += _dense(matmul, node, bias, g)
            counts["dense"] += 1
        elif node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx"):
            replaced = _row_norm(node, g)
            rebuilt += replaced or [node]
            counts["layer_norm"] += replaced is not None
        else:
            rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    graph.initializer.extend(g.added)
    shapes = [info for info in graph.value_info if info.name not in gone]   # the MatMul products are gone
    del graph.value_info[:]
    graph.value_info.extend(shapes)
    return counts
