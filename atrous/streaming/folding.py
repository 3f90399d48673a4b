"""Rewrite a :class:`~atrous.streaming.graph.StreamGraph`: fold pads and crops into windows, prune.

A zero pad read only by a window becomes that window's padding (``F.pad(x, (2, 0))`` then
``Conv1d(k=3)`` is a causal convolution); a crop of a window's output read only by the crop
becomes that window's crop (``Conv1d(padding=2)`` then ``x[:, :, :-2]``, the ``Chomp1d`` of Bai et
al. 2018, is the same causal convolution); then padding and the outputs cropped because they only
see it cancel, so that every causal convolution ends up as ``pad_left = (k - 1) d`` and nothing
else, whichever way it was written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from atrous.streaming.graph import Geometry, Kind, Ref, StreamGraph


def _canonical(geometry: Geometry, transposed: bool) -> Geometry:
    """Cancel padding against cropping of the outputs that only see it."""
    g, s = geometry, geometry.stride
    if transposed:
        shift = max(0, min(g.pad_left, g.crop_left // s))
        return dataclasses.replace(g, pad_left=g.pad_left - shift, crop_left=g.crop_left - shift * s)
    left = max(0, min(g.crop_left, g.pad_left // s))
    right = max(0, min(g.crop_right, g.pad_right // s))
    return dataclasses.replace(g, pad_left=g.pad_left - left * s, crop_left=g.crop_left - left,
                               pad_right=g.pad_right - right * s, crop_right=g.crop_right - right)


def _is_plain(g: Geometry) -> bool:
    return g.kernel_size == 1 and g.stride == 1


def fold(graph: StreamGraph) -> StreamGraph:
    """Fold pads and crops into the windows next to them (in place); cancel what cancels."""
    nodes = graph.nodes
    for index, node in enumerate(nodes):
        if node.kind not in (Kind.WINDOW, Kind.TRANSPOSED):
            continue
        users = graph.users()
        g = node.geometry
        source = node.args[0].index
        producer = nodes[source]
        # a crop of a window's output: the window crops
        if (node.op == "identity" and _is_plain(g) and g.pad_left == g.pad_right == 0
                and producer.kind in (Kind.WINDOW, Kind.TRANSPOSED) and _only_feeds(graph, users, source, index)
                and source != graph.output):
            producer.geometry = dataclasses.replace(producer.geometry, crop_left=producer.geometry.crop_left
                                                    + g.crop_left, crop_right=producer.geometry.crop_right
                                                    + g.crop_right)
            producer.examples = node.examples
            _redirect(graph, index, source)
            continue
        # a pad before a window: the window pads
        if (producer.kind is Kind.WINDOW and producer.op == "identity" and _is_plain(producer.geometry)
                and producer.geometry.crop_left == producer.geometry.crop_right == 0 and users[source] == [index]
                and source != graph.output and Ref(source) not in node.args[1:]):
            p = producer.geometry
            own_pads = g.pad_left or g.pad_right
            if node.kind is Kind.WINDOW and (not own_pads or g.pad_value == p.pad_value):
                node.geometry = dataclasses.replace(g, pad_left=g.pad_left + p.pad_left, pad_right=g.pad_right
                                                    + p.pad_right, pad_value=p.pad_value if not own_pads
                                                    else g.pad_value)
                node.args = (producer.args[0], *node.args[1:])
            elif node.kind is Kind.TRANSPOSED and p.pad_right == 0 and p.pad_value == 0:
                node.geometry = dataclasses.replace(g, pad_left=g.pad_left + p.pad_left)
                node.args = (producer.args[0], *node.args[1:])
    for node in nodes:
        if node.geometry is not None:
            node.geometry = _canonical(node.geometry, node.kind is Kind.TRANSPOSED)
    for index, node in enumerate(nodes):  # a pad and a crop that cancel
        if node.kind is Kind.WINDOW and node.op == "identity" and node.geometry == Geometry(
                pad_value=node.geometry.pad_value) and index != graph.output:
            _redirect(graph, index, node.args[0].index)
    return graph


def _only_feeds(graph: StreamGraph, users: list[list[int]], source: int, reader: int) -> bool:
    """Whether ``reader`` is the only node that reads ``source`` (lengths read for it aside)."""
    def feeds(index: int) -> bool:
        return index == reader or (graph.nodes[index].kind is Kind.SIZE and all(feeds(u) for u in users[index]))

    return all(feeds(user) for user in users[source])


def _redirect(graph: StreamGraph, old: int, new: int) -> None:
    """Every read of node ``old`` reads node ``new`` instead."""
    def swap(value: Any) -> Any:
        if isinstance(value, Ref):
            return Ref(new) if value.index == old else value
        if isinstance(value, (tuple, list)):
            return type(value)(swap(v) for v in value)
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(swap(value.start), swap(value.stop), swap(value.step))
        return value

    for node in graph.nodes:
        node.args, node.kwargs = swap(node.args), swap(node.kwargs)
    if graph.output == old:
        graph.output = new


def prune(graph: StreamGraph) -> StreamGraph:
    """Drop the nodes the output does not need and number the rest in order."""
    live, stack = set(), [graph.output]
    while stack:
        index = stack.pop()
        if index not in live:
            live.add(index)
            stack.extend(graph.nodes[index].inputs)
    order = sorted(live)
    new_index = {old: new for new, old in enumerate(order)}

    def renumber(value: Any) -> Any:
        if isinstance(value, Ref):
            return Ref(new_index[value.index])
        if isinstance(value, (tuple, list)):
            return type(value)(renumber(v) for v in value)
        if isinstance(value, dict):
            return {k: renumber(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(renumber(value.start), renumber(value.stop), renumber(value.step))
        return value

    nodes = []
    for old in order:
        node = graph.nodes[old]
        node.args, node.kwargs = renumber(node.args), renumber(node.kwargs)
        nodes.append(node)
    inputs = {name: new_index[i] for name, i in graph.inputs.items() if i in new_index}
    return StreamGraph(nodes, new_index[graph.output], inputs, graph.eval_only, graph.timing)
