"""The metric the callback tests score with: the real tiny ``STCCLMetric`` behind a call-recording spy."""

import torch

from stccl_diffusers.metric import STCCLMetric


def build_metric():
    """A freshly built (frozen) tiny STCCLMetric: depths (1, 1, 1, 1), frames resized to 64 x 64."""
    torch.manual_seed(0)
    return STCCLMetric(backbone=(1, 1, 1, 1), input_size=64), True


class SpyMetric(torch.nn.Module):
    """Delegates to ``inner`` and records (anchor shape, generated shape, generated requires_grad, anchor rg)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = []
        self.outputs = []

    def freeze(self):
        self.inner.freeze()

    def forward(self, anchor, generated, generator=None):
        self.calls.append((tuple(anchor.shape), tuple(generated.shape), generated.requires_grad, anchor.requires_grad))
        out = self.inner(anchor, generated, generator=generator)
        self.outputs.append(out)
        return out


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """One intra-op thread for the modules that import this: the metric's small convolutions ran ~10x
    slower with 2 threads than with 1 on the shared, loaded 2-core test machine. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
