"""The tests run tiny convolutions, where several OpenMP threads per test (and two pytest-xdist
workers on two cores) cost more than they save; one thread keeps the suite fast and its timing
stable."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
