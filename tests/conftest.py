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


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test that builds an `Accelerator` gets a fresh process state: accelerate keeps one
    per process and refuses a second run with another `mixed_precision` (a user's run is one
    process; the suite runs many configurations in one)."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
