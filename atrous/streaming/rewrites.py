"""Rewrites of a lowered program after every node is in: fewer, larger products and a narrower
workspace (see :func:`stack_sums` and :func:`compact`)."""

from __future__ import annotations

import torch

from atrous.streaming.opset import Op, OpCode, Span


def compact(program, output: Span) -> Span:
    """Drop the workspace columns no op reads or writes (left by folded and dropped ops), keeping
    every span's columns contiguous and in order: a narrower row stays in cache at large batches."""
    ops = program.ops
    spans = [span for op in ops for span in (op.src, op.init, op.dst) if span is not None]
    spans += [span for span in (program.input, program.local, output) if span is not None]
    spans += [span for _, span in program.constants]
    used = [False] * program.width
    for span in spans:
        used[span.offset : span.offset + span.width] = [True] * span.width
    new_offset, count = [], 0
    for flag in used:
        new_offset.append(count)
        count += flag

    def moved(span: Span | None) -> Span | None:
        if span is None:
            return None
        return Span(new_offset[span.offset] if span.offset < len(new_offset) else count, span.width)

    for op in ops:
        op.src, op.init, op.dst = moved(op.src), moved(op.init), moved(op.dst)
    program.input, program.local = moved(program.input), moved(program.local)
    program.constants = [(name, moved(span)) for name, span in program.constants]
    program.width = count
    return moved(output)


def _overlap(a: Span, b: Span) -> bool:
    return a.offset < b.offset + b.width and b.offset < a.offset + a.width


def stack_sums(program, output: Span) -> None:
    """Turn chains of products summed through ``init`` (``y = x_1 @ W_1 + ... + x_n @ W_n``: the
    skip connections of a WaveNet) into one product over ``[x_1, ..., x_n]``, with the ``x_i``
    moved side by side in the workspace: one larger matrix product instead of ``n`` small ones."""
    ops = program.ops
    fixed = [span for span in (program.input, program.local, output) if span is not None]
    fixed += [span for _, span in program.constants]

    def reads(span: Span) -> list[tuple[int, str]]:
        return [(i, name) for i, op in enumerate(ops) for name in ("src", "init")
                if getattr(op, name) is not None and _overlap(getattr(op, name), span)]

    def movable(span: Span) -> bool:  # written by one op, read only as a whole, not an input or output
        writers = [i for i, op in enumerate(ops) if _overlap(op.dst, span)]
        return (len(writers) == 1 and ops[writers[0]].dst == span and ops[writers[0]].code != OpCode.EMBED
                and all(getattr(ops[i], name) == span for i, name in reads(span))
                and not any(_overlap(span, other) for other in fixed))

    index = 0
    while index < len(ops):
        chain = [index]
        while True:  # extend: the next op whose init is this one's dst, its only reader
            last = ops[chain[-1]]
            if last.code != OpCode.LINEAR or _overlap(last.dst, output) or any(_overlap(last.dst, f) for f in fixed):
                break
            readers = reads(last.dst)
            if len(readers) != 1 or readers[0][1] != "init" or ops[readers[0][0]].code != OpCode.LINEAR:
                break
            chain.append(readers[0][0])
        chain_ops = [ops[i] for i in chain]
        if (len(chain) < 2 or chain_ops[0].code != OpCode.LINEAR
                or len({(op.start, op.period) for op in chain_ops}) != 1
                or not all(movable(op.src) for op in chain_ops) or len({op.src for op in chain_ops}) != len(chain)):
            index += 1
            continue
        block = program.alloc(sum(op.src.width for op in chain_ops))
        moved, offset = {}, block.offset
        for op in chain_ops:
            moved[op.src] = Span(offset, op.src.width)
            offset += op.src.width
        for op in ops:
            for name in ("src", "init", "dst"):
                value = getattr(op, name)
                if value in moved:
                    setattr(op, name, moved[value])
        first, last = chain_ops[0], chain_ops[-1]
        weights = program.weights
        matrix = torch.cat([weights[op.weight] for op in chain_ops], dim=0)
        biases = [weights[op.bias] for op in chain_ops if op.bias is not None]
        stacked = Op(OpCode.LINEAR, block, last.dst, init=first.init, weight=program.weight(matrix),
                     bias=program.weight(torch.stack(biases).sum(0)) if biases else None, start=last.start,
                     period=last.period, value=last.value)
        ops[chain[-1]] = stacked
        for i in sorted(chain[:-1], reverse=True):
            del ops[i]
        index = 0  # indices moved: look again from the start
