"""The timing window of decode steps (scripts/_bench.py, used by bench_decode and profile_step): exactly the
counted steps run inside it (CPU, no model); bench_decode's markdown table; the real shapes' configs, the MoE
block step's cost, and ``--small`` runs of the script (tiny configs on the CPU, the same code as on the GPU).

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

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)
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


# ------------------------------------------------------------------ shapes, the MoE block step, --small runs
def test_shapes_are_the_real_configs():
    import math

    from _bench import SHAPES, llada2_mini, llada_moe_7b
    from llada_triton.models.moe_weights import moe_param_name_map

    assert set(SHAPES) == {"llada-8b", "dream-7b", "llada2-mini", "llada-moe-7b"}
    c = llada2_mini()
    assert (c.family, c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.rotary_dim) == \
        ("llada2", 2048, 20, 16, 4, 128, 64)
    assert (c.n_experts, c.top_k, c.n_group, c.topk_group, c.moe_intermediate_size, c.shared_intermediate_size,
            c.intermediate_size, c.moe_layers.count(False), c.vocab_size) == (256, 8, 8, 4, 512, 512, 5120, 1, 157184)
    # the released bf16 checkpoint's index holds 32,511,296,512 bytes (expert_bias stored in fp32)
    nbytes = sum(math.prod(e[4]) * (4 if name.endswith("expert_bias") else 2)
                 for name, e in moe_param_name_map(c).items())
    assert nbytes == 32_511_296_512
    m = llada_moe_7b()
    assert (m.family, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.n_experts, m.top_k,
            m.moe_intermediate_size, m.shared_intermediate_size, all(m.moe_layers)) == \
        ("lladamoe", 2048, 16, 16, 16, 64, 8, 1024, None, True)


def test_block_step_cost_counts_every_weight_once_and_the_touched_experts():
    from _bench import llada2_mini, random_params, small_config
    from _block_step import block_start, step_cost, uniform_touched

    cfg = small_config(llada2_mini())
    params = random_params(cfg, "cpu", torch.float32)
    B, Lb, kv, touched = 2, 8, 40, [3, 5]
    d, H, Hkv, D, V, E, I, h = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.vocab_size,  # noqa: E741
                                cfg.n_experts, cfg.moe_intermediate_size, cfg.intermediate_size)
    attn = (H + 2 * Hkv) * D * d + d * H * D
    moe_fixed = E * d + 3 * cfg.shared_intermediate_size * d
    rows = B * Lb
    want_elems = (V * d + d + rows * d + 3 * (attn + 2 * d + 2 * D) + 3 * h * d + 2 * (moe_fixed + E)
                  + sum(touched) * 3 * I * d + 3 * 2 * B * kv * Hkv * D)
    want_flops = (2 * rows * (V * d + 3 * attn + 3 * h * d + 2 * moe_fixed) + 2 * 2 * rows * cfg.top_k * 3 * I * d
                  + 3 * 4 * rows * kv * H * D)
    assert step_cost(params, cfg, touched, batch=B, block=Lb, kv_len=kv) == (4 * want_elems, want_flops)
    assert block_start(128, 256, 32, "mid") == 256 and block_start(128, 256, 32, "last") == 352
    with pytest.raises(ValueError, match="gen=100 must be a positive multiple of block=32"):
        block_start(128, 100, 32, "mid")
    assert abs(uniform_touched(256, 8, 32) - 256 * (1 - (1 - 8 / 256) ** 32)) < 1e-9


def _run_small(tmp_path, *args, timeout=600):
    import csv
    import subprocess

    out = tmp_path / "b.csv"
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_decode.py"), "--small", "--sha", "abc1234",
                        "--out", str(out), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    return rows, (tmp_path / "b.md").read_text()


@pytest.mark.parametrize("shape", ["llada2-mini", "llada-moe-7b"])
def test_small_moe_block_step_runs_both_providers(tmp_path, shape):
    rows, md = _run_small(tmp_path, "--shape", shape, "--batches", "2", "--shapes", "8x16", "--calls", "1")
    assert [(r["provider"], r["policy"], r["batch"], r["error"]) for r in rows] == \
        [("triton", "block", "2", ""), ("torch-reference", "block", "2", "")]
    for r in rows:
        assert r["model"] == shape and r["sha"] == "abc1234" and r["gpu"].startswith("cpu") and r["timing"] == "eager"
        assert float(r["ms_per_step"]) > 0 and float(r["floor_ms"]) > 0 and float(r["step_gb"]) > 0
        assert r["kv_len"] == str(8 + 8 + 8)  # --at mid: the block holding position prompt + gen / 2
        n, of = r["experts_touched"].split(" of ")[0], r["experts_touched"].split(" of ")[1].split()[0]
        assert 0 < float(n) <= int(of) == 16
    assert rows[0]["experts_touched"] == rows[1]["experts_touched"]  # fp32: both ops route alike
    assert "| experts/layer | uniform | step GB | KV | timing |" in md and "x floor" in md


def test_small_dream_covers_every_policy_beside_the_reference(tmp_path):
    rows, md = _run_small(tmp_path, "--shape", "dream-7b", "--providers", "reference", "--batches", "2",
                          "--shapes", "4x16")
    assert [(r["policy"], r["batch"]) for r in rows] == [(p, "2") for p in ("none", "prefix", "dual", "block")]
    assert all(r["provider"] == "torch-reference" and r["error"] == "" and int(r["timed_steps"]) == 7 for r in rows)
    assert all(float(r["x_floor"]) > 0 and r["model"] == "dream-7b" for r in rows)
    assert "Dream-7B (small" in md


def test_small_dream_fast_path_and_the_model_alias(tmp_path):
    rows, _ = _run_small(tmp_path, "--model", "dream-7b", "--no-reference", "--policies", "dual", "--batches", "1",
                         "--shapes", "4x16")
    assert [(r["provider"], r["policy"], r["error"], r["timed_steps"]) for r in rows] == [("triton", "dual", "", "7")]
