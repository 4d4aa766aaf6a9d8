import os
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Dataset/model cache shared by the session (ASSIMBENCH_CACHE if set, as in CI)."""
    env = os.environ.get("ASSIMBENCH_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    tensors and small FFTs run fastest so, and their timings are steadier on a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def bench_cmd():
    """The real `bench` CLI as a subprocess command prefix."""
    return [sys.executable, "-m", "bench"]
