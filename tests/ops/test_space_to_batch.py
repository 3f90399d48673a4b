"""space_to_batch / batch_to_space against strided slicing of the padded input."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atrous import batch_to_space, space_to_batch


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 4), st.data())
def test_space_to_batch_matches_strided_slicing(ndim, block, data):
    sizes = tuple(data.draw(st.integers(1, 9)) for _ in range(ndim))
    x = torch.randn(2, 3, *sizes)
    y = space_to_batch(x, block)
    padded = np.pad(x.numpy(), [(0, 0), (0, 0)] + [(0, -n % block) for n in sizes])
    # Batch index = offset * N + n, offsets in row-major order (TensorFlow's layout).
    offsets = np.stack(np.meshgrid(*[np.arange(block)] * ndim, indexing="ij"), -1).reshape(-1, ndim)
    for i, offset in enumerate(offsets):
        index = (slice(None), slice(None), *(slice(o, None, block) for o in offset))
        np.testing.assert_array_equal(y[i * 2 : (i + 1) * 2].numpy(), padded[index])
    crops = [(0, -n % block) for n in sizes]
    torch.testing.assert_close(batch_to_space(y, block, crops=crops), x, rtol=0, atol=0)


def test_explicit_paddings_and_per_axis_blocks():
    x = torch.randn(1, 2, 5, 7)
    pads = [(1, 0), (2, 3)]
    y = space_to_batch(x, (2, 3), paddings=pads)
    assert y.shape == (6, 2, 3, 4)
    torch.testing.assert_close(batch_to_space(y, (2, 3), crops=pads), x, rtol=0, atol=0)
