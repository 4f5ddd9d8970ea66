"""The timing window of decode steps (scripts/_bench.py, used by bench_decode and profile_step): exactly the
counted steps run inside it (CPU, no model); and bench_decode's markdown table.

A fake stream enqueues each step's work before yielding its event, like ``decode.generate_stream``; the
fake ``sync`` marks the enqueued work done and the fake clock reads how many steps are done, so the
window's "seconds" are the number of steps that ran inside it. Each event carries the driver's forward
counter, here ``per_step`` forwards a step (2: as with classifier-free guidance), so the window's NFE is read,
not derived from the step count.
"""
import os
import sys

import pytest
import torch

from llada_triton.decode import BlockEvent, StepEvent

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from _bench import timed_window  # noqa: E402


class FakeGPU:
    def __init__(self, per_step=1):
        self.enqueued = 0
        self.done = 0
        self.per_step = per_step

    def event(self, b, i):
        z = torch.zeros(1, 1)
        nfe = torch.full((2,), self.per_step * self.enqueued, dtype=torch.int64)  # forwards enqueued so far
        nfe[1] //= 2  # row 1 spends fewer forwards (as a row that has finished): the window reports the most
        return StepEvent(b, i, z.bool(), z.long(), z, nfe)

    def sync(self):
        self.done = self.enqueued

    def clock(self):
        return float(self.done)

    def stream(self, blocks, steps):
        z = torch.zeros(1, 1)
        for b in range(blocks):
            for i in range(steps):
                self.enqueued += 1  # the step's work is enqueued, then its event is yielded
                yield self.event(b, i)
            yield BlockEvent(b, 0, z.long())

    def block_stream(self, blocks, steps):
        """As the graphed driver with a fixed schedule: a block's later steps are enqueued together, before the
        first of their events is yielded."""
        z = torch.zeros(1, 1)
        events = []
        for b in range(blocks):
            self.enqueued += 1
            yield self.event(b, 0)
            for i in range(1, steps):
                self.enqueued += 1
                events.append(self.event(b, i))
            yield from events
            events.clear()
            yield BlockEvent(b, 0, z.long())


@pytest.mark.parametrize("per_step", [1, 2])
@pytest.mark.parametrize("kind", ["stream", "block_stream"])
@pytest.mark.parametrize("n_steps,expect", [(1, 3), (3, 3), (4, 7), (7, 7), (0, 7), (100, 7)])
def test_window_holds_exactly_the_counted_steps(kind, n_steps, expect, per_step):
    gpu = FakeGPU(per_step)
    seconds, n, nfe = timed_window(getattr(gpu, kind)(3, 4), n_steps, gpu.sync, gpu.clock)  # 0: all
    # blocks 1 and 2 have 4 steps each; block 1's first is not timed: at most 7; the window ends with a block
    assert n == expect
    assert seconds == n, "the window must hold exactly the steps it counts"
    assert nfe == per_step * n, "the window's NFE: the forwards its steps spent, from the events' counters"


def test_window_needs_a_step_after_block_1s_first():
    gpu = FakeGPU()
    with pytest.raises(ValueError, match="nothing to time"):
        timed_window(gpu.stream(2, 1), 5, gpu.sync, gpu.clock)


def test_render_has_the_nfe_and_memory_columns_and_reads_older_csvs(tmp_path):
    from bench_decode import render

    common = dict(policy="block", batch=1, prompt=128, gen=256, block=32, provider="triton+graphs", ms_per_step=4.3,
                  tokens_per_s=232.6, floor_ms=3.6, pct_of_floor=83.7, timed_steps=223, peak_gib=16.1, error="",
                  copy_tbps=4.2, matmul_tflops=770.0, gpu="GPU", torch="t", triton="tr", sha="abc1234")
    for name, extra, cells in (("new.csv", dict(nfe=223, peak_reserved_gib=17.5), ("| 223 | 223 | 4.3 |", "| 16.1 | 17.5 |")),
                               ("old.csv", {}, ("| 223 |  | 4.3 |", "| 16.1 |  |"))):
        path = tmp_path / name
        row = dict(common, **extra)
        path.write_text(",".join(row) + "\n" + ",".join(str(v) for v in row.values()) + "\n")
        text = render(str(path), str(tmp_path / (name + ".md")))
        assert "| steps | NFE | ms/step |" in text and "| peak GiB | peak held GiB | note |" in text
        assert all(c in text for c in cells), text
        assert (tmp_path / (name + ".md")).read_text() == text
