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


@pytest.fixture
def bench_cmd():
    """The real `bench` CLI as a subprocess command prefix."""
    return [sys.executable, "-m", "bench"]
