import pytest
import torch as th


@pytest.fixture(autouse=True)
def _one_thread():
    # Small networks run fastest on one thread, and parallel pytest workers share two cores.
    th.set_num_threads(1)
