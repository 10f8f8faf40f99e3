"""Every test module runs torch on one thread.

The models here are tiny: a second intra-op thread buys nothing, and on a shared 2-core machine
an OpenMP thread pool that competes with other processes can make a 1 s training run take a
minute (spin-waiting). The previous setting is restored after each test module.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
