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
