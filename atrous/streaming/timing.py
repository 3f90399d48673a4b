"""Sample rates, delays and lookahead of a :class:`~atrous.streaming.graph.StreamGraph`.

Two counts describe every value with a time axis after ``A`` input samples: how many of its
samples are *ready* (they depend on those ``A`` samples only) and how many the offline forward
on those ``A`` samples gives in the *end* (the last ones computed with the right padding). A
window over padded input ``[m s, m s + K)`` has output ``m`` ready once ``pad_left + A >= m s +
K``; a pointwise op has as many ready as its least ready input, which is how residual paths of
different delays line up. The difference between the two counts of the output is the number
of outputs that wait for later input: :attr:`~atrous.streaming.graph.Timing.delay`. Both counts
are integer functions built from ``+``, ``*`` and floor division, periodic in ``A`` with the
product of the strides as period, so the steady state is read off one period at a large ``A``.
"""

from __future__ import annotations

from fractions import Fraction

from atrous.streaming.graph import Kind, Node, StreamGraph, Timing, lcm_of_denominators

FAR = 1 << 40  # an input length far past every transient (in whole periods)


def _timed_inputs(graph: StreamGraph, node: Node) -> list[int]:
    return [i for i in node.inputs if graph.nodes[i].timed]


def counts(graph: StreamGraph, samples: int) -> list[tuple[int, int]]:
    """Per node, (ready, end) sample counts after ``samples`` inputs (``(0, 0)`` without a time axis)."""
    result: list[tuple[int, int]] = []
    for node in graph.nodes:
        if not node.timed:
            result.append((0, 0))
        elif node.kind is Kind.INPUT:
            result.append((samples, samples))
        elif node.kind in (Kind.WINDOW, Kind.TRANSPOSED):
            ready, end = result[node.args[0].index]
            result.append(node.geometry.counts(node.kind is Kind.TRANSPOSED, ready, end))
        else:
            sources = [result[i] for i in _timed_inputs(graph, node)]
            result.append((min(ready for ready, _ in sources), sources[0][1]))
    return result


def _rates(graph: StreamGraph) -> None:
    for node in graph.nodes:
        if not node.timed or node.kind is Kind.INPUT:
            continue
        rates = {graph.nodes[i].rate for i in _timed_inputs(graph, node)}
        if len(rates) > 1:
            raise ValueError(f"cannot stream {node.label}: it combines values at different sample rates "
                             f"({', '.join(str(r) for r in sorted(rates))} samples per input sample)")
        rate = rates.pop()
        if node.kind is Kind.WINDOW:
            rate /= node.geometry.stride
        elif node.kind is Kind.TRANSPOSED:
            rate *= node.geometry.stride
        node.rate = rate


def _check_lengths(graph: StreamGraph, lengths: tuple[int, int]) -> None:
    """The counts must predict the length of every example value along time."""
    for which, length in enumerate(lengths):
        for node, (_, end) in zip(graph.nodes, counts(graph, length)):
            example = node.examples[which]
            if node.axis is not None and hasattr(example, "shape") and example.shape[node.axis] != end:
                raise ValueError(f"cannot stream {node.label}: its time geometry predicts {end} samples for an input "
                                 f"of {length} but it gives {example.shape[node.axis]}")


def _own_lookahead(node: Node, period: int) -> int:
    """Input samples past the end of its input that ``node`` needs for its last output (0 if none)."""
    if node.kind not in (Kind.WINDOW, Kind.TRANSPOSED):
        return 0
    transposed = node.kind is Kind.TRANSPOSED
    steady = [FAR * period + j for j in range(node.geometry.stride)]
    need = 0
    while not all(node.geometry.counts(transposed, n + need, n + need)[0] >= node.geometry.counts(transposed, n, n)[1]
                  for n in steady):
        need += 1
    return need


def analyse(graph: StreamGraph, lengths: tuple[int, int]) -> Timing:
    """Rates (set on the nodes), delay, lookahead and the nodes that cause them.

    Args:
        graph: a normalised graph.
        lengths: the lengths along time of its two example inputs, to check the geometry on.

    Raises:
        ValueError: values at different rates combined, or a geometry that does not match the
            examples (both name the node).
    """
    _rates(graph)
    _check_lengths(graph, lengths)
    nodes, output = graph.nodes, graph.output
    period = lcm_of_denominators([node.rate for node in nodes if node.timed])
    steady = [FAR * period + j for j in range(period)]
    table = [counts(graph, samples) for samples in steady]
    waiting = [max(row[i][1] - row[i][0] for row in table) for i in range(len(nodes))]
    timing = Timing(rate=nodes[output].rate, period=period, delay=waiting[output], waiting=waiting)
    if timing.delay:
        def enough(extra: int) -> bool:
            return all(counts(graph, n + extra)[output][0] >= row[output][1] for n, row in zip(steady, table))

        high = 1
        while not enough(high):
            high *= 2
            if high > FAR:
                raise ValueError("cannot stream the model: its output never catches up with its input")
        low = high // 2
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if enough(middle) else (middle, high)
        timing.lookahead = high
        seen, stack = set(), [output]
        while stack:  # back from the output along the values that wait, to the nodes that make them wait
            index = stack.pop()
            if index in seen or not waiting[index]:
                continue
            seen.add(index)
            own = _own_lookahead(nodes[index], period)
            if own:
                timing.sources.append((index, own))
            stack.extend(_timed_inputs(graph, nodes[index]))
        timing.sources.sort()
    at = FAR * period
    row = counts(graph, at)
    timing.lead = next((i for i, node in enumerate(nodes) if node.timed and node.kind is not Kind.SIZE
                        and _computed(graph, node, row, i) > at * node.rate), None)
    return timing


def _computed(graph: StreamGraph, node: Node, row: list[tuple[int, int]], index: int) -> int:
    """Samples of ``node`` computed so far: the ready ones, and those a window holds back to crop."""
    if node.kind not in (Kind.WINDOW, Kind.TRANSPOSED):
        return row[index][0]
    raw = node.geometry.transposed_raw if node.kind is Kind.TRANSPOSED else node.geometry.window_raw
    return raw(row[node.args[0].index][0], final=False) - node.geometry.crop_left


def position(samples: int, rate: Fraction) -> int:
    """Index, in a value at ``rate``, of the sample that input sample ``samples`` starts."""
    value = samples * rate
    if value.denominator != 1:
        raise ValueError(f"input position {samples} falls inside a sample of a value at rate {rate}")
    return int(value)
