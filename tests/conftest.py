import os
from pathlib import Path

import pytest
import torch

# Tiny tensors: one intra-op thread is faster than two, and much faster on a loaded 2-core machine.
torch.set_num_threads(int(os.environ.get("STCCL_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    """The real clips and manifest beside the checkout; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only present in the development workspace)")
    return SHARED_DATA
