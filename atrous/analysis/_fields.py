"""Receptive-field algebra along one spatial axis.

Each tensor in a network carries, per spatial axis, the field of its output 0: its size, the
step between the fields of neighbouring outputs (the effective stride, or "jump") and the
input coordinate where it starts. These compose through a layer of kernel ``k``, stride ``s``,
dilation ``d`` and low padding ``p`` as

    size' = size + (k - 1) * d * jump,   jump' = jump * s,   start' = start - p * jump,

the recurrence of Araujo et al. 2019 ("Computing receptive fields of convolutional neural
networks", Distill), whose ``padding = -start`` convention is TensorFlow's receptive_field
library: output 0's field is centred at ``-padding + (size - 1) / 2``. Fractions keep
upsampling (stride < 1) exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from atrous.ops.padding import kernel_extent


@dataclass(frozen=True)
class Axis:
    """The field of output 0 along one axis, in input coordinates.

    Attributes:
        size: number of input samples in the field (the largest over outputs, for upsampling).
        jump: distance in input samples between the fields of adjacent outputs.
        start: input coordinate of the field's first sample (``-padding``).
        whole: the field is the whole input (after global or adaptive pooling).
        extent: input length along this axis, the size of a ``whole`` field.
    """

    size: Fraction
    jump: Fraction
    start: Fraction
    whole: bool = False
    extent: int = 0

    @property
    def stop(self) -> Fraction:
        return self.start + self.size - 1

    @property
    def centre(self) -> Fraction:
        return self.start + (self.size - 1) / 2


def input_axis(extent: int) -> Axis:
    """The identity field of the network input: one sample, stride 1, starting at 0."""
    return Axis(Fraction(1), Fraction(1), Fraction(0), False, extent)


def window(axis: Axis, kernel: int, stride: Fraction | int, dilation: int, pad_low: Fraction | int) -> Axis:
    """Field after a sliding window (convolution, pooling, padding, slicing)."""
    jump = axis.jump * Fraction(stride)
    if axis.whole:
        return Axis(axis.size, jump, axis.start, True, axis.extent)
    size = axis.size + (kernel_extent(kernel, dilation) - 1) * axis.jump
    return Axis(size, jump, axis.start - Fraction(pad_low) * axis.jump, False, axis.extent)


def upsample(axis: Axis, factor: Fraction, taps: int, first_centre: Fraction) -> Axis:
    """Field after upsampling by ``factor``.

    Args:
        axis: the field of the layer's input.
        factor: output size / input size (> 1 for upsampling).
        taps: input samples one output interpolates from (1 nearest, 2 linear, 4 cubic).
        first_centre: the input coordinate output 0 is interpolated at.
    """
    jump = axis.jump / factor
    if axis.whole:
        return Axis(axis.size, jump, axis.start, True, axis.extent)
    size = axis.size + (taps - 1) * axis.jump
    offset = first_centre - Fraction(taps - 1, 2)
    return Axis(size, jump, axis.start + offset * axis.jump, False, axis.extent)


def whole(axis: Axis, jump: Fraction | None = None) -> Axis:
    """The whole input: what global pooling (or a dense layer) sees.

    ``jump`` is the stride of the pooled output (input jump x pooled length), so a pooled map
    upsampled back to its old size returns to the old stride.
    """
    return Axis(Fraction(axis.extent), axis.jump if jump is None else jump, Fraction(0), True, axis.extent)


def union(axes: list[Axis]) -> tuple[Axis, bool]:
    """Field of an elementwise merge (sum, product, concatenation) of branches.

    Returns:
        The union and whether the branches are misaligned: different strides, or fields of
        which none contains the others (the merged outputs look at different places).
    """
    if any(a.whole for a in axes):
        # The size is the whole input; the stride is still the local branches' (ASPP's pooling).
        local = [a for a in axes if not a.whole] or axes
        return Axis(Fraction(axes[0].extent), max(a.jump for a in local), Fraction(0), True, axes[0].extent), False
    jumps = {a.jump for a in axes}
    start = min(a.start for a in axes)
    stop = max(a.stop for a in axes)
    merged = Axis(stop - start + 1, max(jumps), start, False, axes[0].extent)
    contained = any(a.start == start and a.stop == stop for a in axes)
    return merged, len(jumps) > 1 or not contained


def as_number(value: Fraction) -> int | float:
    """An int when the fraction is whole, else a float (for tables and JSON)."""
    return int(value) if value.denominator == 1 else float(value)
