"""scripts/bench_decode.py's timing window: exactly the counted steps run inside it (CPU, no model).

A fake stream enqueues each step's work before yielding its event, like ``decode.generate_stream``; the
fake ``sync`` marks the enqueued work done and the fake clock reads how many steps are done, so the
window's "seconds" are the number of steps that ran inside it.
"""
import os
import sys

import pytest
import torch

from decode.generate import BlockEvent, StepEvent

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from bench_decode import timed_window  # noqa: E402


class FakeGPU:
    def __init__(self):
        self.enqueued = 0
        self.done = 0

    def sync(self):
        self.done = self.enqueued

    def clock(self):
        return float(self.done)

    def stream(self, blocks, steps):
        z = torch.zeros(1, 1)
        for b in range(blocks):
            for i in range(steps):
                self.enqueued += 1  # the step's work is enqueued, then its event is yielded
                yield StepEvent(b, i, z.bool(), z.long(), z, z.long())
            yield BlockEvent(b, 0, z.long())


    def block_stream(self, blocks, steps):
        """As the graphed driver with a fixed schedule: a block's later steps are enqueued together, before the
        first of their events is yielded."""
        z = torch.zeros(1, 1)
        for b in range(blocks):
            self.enqueued += 1
            yield StepEvent(b, 0, z.bool(), z.long(), z, z.long())
            self.enqueued += steps - 1
            for i in range(1, steps):
                yield StepEvent(b, i, z.bool(), z.long(), z, z.long())
            yield BlockEvent(b, 0, z.long())


@pytest.mark.parametrize("kind", ["stream", "block_stream"])
@pytest.mark.parametrize("n_steps,expect", [(1, 3), (3, 3), (4, 7), (7, 7), (0, 7), (100, 7)])
def test_window_holds_exactly_the_counted_steps(kind, n_steps, expect):
    gpu = FakeGPU()
    seconds, n = timed_window(getattr(gpu, kind)(3, 4), n_steps, gpu.sync, gpu.clock)  # 0: all
    # blocks 1 and 2 have 4 steps each; block 1's first is not timed: at most 7; the window ends with a block
    assert n == expect
    assert seconds == n, "the window must hold exactly the steps it counts"


def test_window_needs_a_step_after_block_1s_first():
    gpu = FakeGPU()
    with pytest.raises(ValueError, match="nothing to time"):
        timed_window(gpu.stream(2, 1), 5, gpu.sync, gpu.clock)
