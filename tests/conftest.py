import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

# Tiny tensors: one intra-op thread is faster than two, and much faster on a loaded 2-core machine.
torch.set_num_threads(int(os.environ.get("STCCL_TEST_THREADS", "1")))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def load_repo_module(relpath: str):
    """Import a top-level script of the checkout (e.g. ``train_eat_stccl.py``,
    ``benchmarks/bench_effect.py``) as a module, registered in ``sys.modules`` under its stem so
    dataclasses and pickling inside it work."""
    path = REPO_ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def shared_data():
    """The real clips and manifest beside the checkout; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (only present in the development workspace)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def two_threads():
    """Two intra-op threads for one module (`pytestmark = pytest.mark.usefixtures("two_threads")`):
    EAT's 256-px renderer runs large convolutions, where the second thread pays. Restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def eat_checkout(tmp_path_factory):
    """A user's EAT checkout for one test module: EAT's real source symlinked from
    ../shared/third_party/EAT_code plus random weights in EAT's formats (skips when absent;
    tests/_eat_real_checkout.py)."""
    from _eat_real_checkout import eat_test_checkout

    return eat_test_checkout(tmp_path_factory)


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
