"""scripts/bench_kernels.py: the dry run (tiny config, CPU, TRITON_INTERPRET=1) end to end in a subprocess,
the renderer on its CSV, and the 8B shapes derived from the config. Numbers are not checked, only plumbing
(and that every kernel's output matches its reference's)."""
import csv
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import bench_kernels as bk  # noqa: E402  (imports neither torch nor triton at module level)


@pytest.fixture(scope="module")
def dry_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_kernels")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, os.path.join(SCRIPTS, "bench_kernels.py"), "--dry-run", "--out", str(out),
                        "--sha", "abc1234", "--no-render"], env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    paths = [f for f in os.listdir(out) if f.endswith(".csv")]
    assert paths == ["kernels_cpu_dry_run_abc1234.csv"], paths
    return os.path.join(out, paths[0])


def _read(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return r.fieldnames, list(r)


def test_dry_run_rows(dry_csv):
    header, rows = _read(dry_csv)
    assert header == bk.FIELDS
    assert [r for r in rows if r["error"]] == []
    assert {r["op"] for r in rows} == set(bk.OPS)
    reg = bk.DRY_REGIME
    n_shapes = {op: len(reg.batches) * len(reg.kv_lens) for op in ("block_attention", "block_attention+key_end")}
    for op in bk.OPS:
        orows = [r for r in rows if r["op"] == op]
        provs = {r["provider"] for r in orows}
        for p in ("torch", "triton") + (() if op == "head_confidence+T1" else ("torch-compile",)):
            assert {p, p + "-graph"} <= provs, (op, provs)
        assert len({r["shape"] for r in orows}) == n_shapes.get(op, len(reg.batches)), op
        # the same-bytes copy yardstick: the memory-bound ops only, timed both ways, never checked
        assert ({"copy", "copy-graph"} <= provs) == (op in bk.COPY_OPS), (op, provs)
    assert all(r["kind"] == "yardstick" and r["check"] == "" for r in rows
               if r["provider"].split("-graph")[0] in ("copy", "cublas-matmul"))
    for op in ("head_confidence", "head_confidence+T1", "head_confidence+cfg"):
        assert {r["provider"] for r in rows if r["op"] == op} >= {"cublas-matmul", "cublas-matmul-graph"}, op
    for r in rows:
        assert float(r["p20_us"]) <= float(r["p50_us"]) <= float(r["p80_us"])
        assert float(r["pct_roofline"]) >= 0 and int(r["bytes"]) > 0
        assert r["sha"] == "abc1234" and r["gpu"] == "cpu (dry run)" and r["torch"] and r["triton"]
        assert r["timing"] == ("cuda-graph" if r["provider"].endswith("-graph") else "do_bench")
        if r["timing"] == "do_bench" and r["kind"] not in ("reference", "yardstick"):  # all compute the same thing
            if r["op"] == "head_confidence+T1":  # sampled at temperature 1: nothing to compare
                assert r["check"] == "", r
                continue
            c = r["check"].split()
            equal = c[0] == "equal" and c[1].split("/")[0] == c[1].split("/")[1]
            assert (c[0] == "maxdiff" and float(c[1]) < 1e-4) or equal, r


def test_render(dry_csv, tmp_path):
    header, rows = _read(dry_csv)
    bad = dict(rows[0], provider="torch-compile", kind="compile", p50_us="", p20_us="", p80_us="", pct_roofline="",
               error="BackendCompilerFailed: boom")
    path = tmp_path / "k.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows([r for r in rows if not (r["op"] == bad["op"] and r["shape"] == bad["shape"]
                                             and r["provider"] == "torch-compile")] + [bad])
    text = bk.render(str(path))
    assert (tmp_path / "k.md").read_text() == text
    assert (tmp_path / "k.png").stat().st_size > 10_000
    assert "## Headline" in text and "abc1234" in text and "cpu (dry run)" in text
    for op in bk.OPS:
        assert f"## {op}\n" in text
    assert "BackendCompilerFailed: boom" in text and " error |" in text
    hl = bk.headline(rows)
    assert {h["op"] for h in hl} == set(bk.OPS)
    assert all(h["speedup"] > 0 for h in hl)
    assert all(h["best"].split("-graph")[0] not in ("copy", "cublas-matmul") for h in hl)  # never the competitor
    assert all((h["copy_us"] is not None) == (h["op"] in bk.COPY_OPS) for h in hl)
    assert "same-bytes copy (graph) us" in text


def test_shapes_from_8b_config():
    import torch

    cfg = bk.model_config()
    assert (cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.mlp_hidden_size, cfg.vocab_size) == (4096, 32, 128, 12288,
                                                                                            126464)
    ctx = bk.Ctx(False, "cpu", torch.bfloat16, torch.Generator().manual_seed(0), "eager", "default")
    cases = bk.build_cases(cfg, bk.Regime(), ctx)  # inputs are made lazily: nothing of 8B size is allocated
    count = {op: sum(c.op == op for c in cases) for op in bk.OPS}
    assert count == {op: 9 if op.startswith("block_attention") else 3 for op in bk.OPS}
    assert set(bk.DECODE_OPS) <= set(bk.OPS)
    by = {(c.op, c.shape): c for c in cases}
    att = by[("block_attention", "B32-Tq32-KV4096-H32-D128")]
    assert att.nbytes == 2 * (2 * 32 * 4096 * 32 * 128 + 2 * 32 * 32 * 32 * 128)
    assert att.flops == 4 * 32 * 32 * 32 * 4096 * 128
    mlp = by[("swiglu_mlp", "B1-M32-d4096-h12288")]
    assert mlp.nbytes == 2 * (3 * 4096 * 12288 + 3 * 32 * 4096) and mlp.flops == 6 * 32 * 4096 * 12288
    head = by[("head_confidence", "B8-M256-V126464-d4096")]
    assert head.flops == 2 * 256 * 126464 * 4096
    assert by[("head_confidence+cfg", "B8-M256-V126464-d4096")].flops == 2 * head.flops
    assert "torch-compile" not in by[("head_confidence+T1", "B8-M256-V126464-d4096")].providers
    assert {"torch", "torch-compile", "triton", "cublas-matmul"} == set(head.providers)
    qkv = by[("qkv_proj_rope", "B1-T32-d4096-NH96-D128")]
    assert qkv.flops == 2 * 32 * 96 * 128 * 4096
    assert qkv.nbytes == 2 * (96 * 128 * 4096 + 32 * 4096 + 32 * 96 * 128) + 2 * 4 * 32 * 128
    lin = by[("linear_rms_norm", "B32-M1024-d4096")]
    assert lin.flops == 2 * 1024 * 4096 * 4096 and {"cublas", "triton", "torch", "torch-compile"} == set(lin.providers)
    assert {"cublas+silu_mul", "triton", "torch", "torch-compile"} == set(
        by[("swiglu_mlp_rms_norm", "B1-M32-d4096-h12288")].providers)
    assert {"torch", "torch-compile", "triton", "copy"} == set(by[("rope", "B1-T32-H32-D128")].providers)
    assert {"sdpa-flash", "flex-attention", "triton", "torch", "torch-compile"} == set(att.providers)
    graphed = by[("block_attention+key_end", "B32-Tq32-KV1024-Tmax4096-H32-D128")]
    assert graphed.nbytes == 2 * (2 * 32 * 1024 * 32 * 128 + 2 * 32 * 32 * 32 * 128) and graphed.kv_len == 1024
    assert {"torch", "torch-compile", "triton", "F.rms_norm", "copy"} == set(by[("rms_norm", "B1-R32-d4096")].providers)
    assert {"cublas", "cublas+silu_mul", "triton", "torch", "torch-compile"} == set(mlp.providers)
    lg = by[("logits_confidence", "B32-M1024-V126464")]
    assert lg.nbytes == 2 * 1024 * 126464 + 12 * 1024 and lg.flops == 0
    assert {"torch", "torch-official", "torch-official-bf16", "torch-compile", "triton"} == set(lg.providers)
    assert {"torch", "torch-compile", "triton"} == set(by[("select_transfer+factor", "B1-L32")].providers)


class _FakeTimer:
    """Records the order of graph samples; sample values grow with time (a drifting GPU)."""

    def __init__(self, samples):
        self.graph_samples, self.calls, self.t = samples, [], 0.0

    @staticmethod
    def quantiles(v):
        return bk.Timer.quantiles(v)

    def eager(self, fn):
        fn()
        return [1.0, 1.0, 1.0]

    def graph_sample(self, fn_per_set, n_sets):
        self.t += 1.0
        self.calls.append(fn_per_set(0))
        return self.t


def test_graph_samples_round_robin():
    """Graph samples are taken provider after provider within each round, so a drift hits all alike; a failing
    provider gets error rows for both timings and does not stop the others."""
    import torch

    def boom(shared, s):
        raise RuntimeError("no kernel")

    case = bk.Case("op", "S", 1, 1, 0, 8, 0, 8, make=lambda n: (None, [torch.ones(2) for _ in range(n)]),
                   out_of=lambda out: None)  # outputs are names here: no check
    case.providers = {"torch": ("reference", lambda sh, s: "torch"), "triton": ("triton", lambda sh, s: "triton"),
                      "bad": ("library", boom), "copy": ("yardstick", lambda sh, s: "copy")}
    timer = _FakeTimer(3)
    ctx = bk.Ctx(True, "cpu", torch.float32, None, "eager", "default")
    base = dict(copy_gbps=1.0, matmul_tflops=1.0)
    rows = bk.run_case(case, ["torch", "triton", "bad", "copy"], timer, ctx, base, deadline=float("inf"), l2_bytes=0)
    assert timer.calls == ["torch", "triton", "copy"] * 3
    by = {r["provider"]: r for r in rows}
    assert set(by) == {"torch", "torch-graph", "triton", "triton-graph", "bad", "bad-graph", "copy", "copy-graph"}
    # samples 1, 4, 7 (torch), 2, 5, 8 (triton), 3, 6, 9 (copy): each round adds the same drift to all
    assert by["triton-graph"]["p50_us"] - by["torch-graph"]["p50_us"] == 1.0
    assert by["copy-graph"]["p50_us"] == 6.0
    assert "RuntimeError: no kernel" in by["bad"]["error"] and by["bad-graph"]["error"].startswith("not timed: ")
    assert by["bad-graph"]["p50_us"] == "" and by["triton"]["error"] == ""


def test_graph_samples_skip_after_deadline():
    """Past the time budget, no graph row starts (rows say so); eager rows skip too."""
    import torch

    case = bk.Case("op", "S", 1, 1, 0, 8, 0, 8, make=lambda n: (None, [torch.ones(2) for _ in range(n)]),
                   out_of=lambda out: None)
    case.providers = {"torch": ("reference", lambda sh, s: "torch")}
    timer = _FakeTimer(2)
    rows = bk.run_case(case, ["torch"], timer, bk.Ctx(True, "cpu", torch.float32, None, "eager", "default"),
                       dict(copy_gbps=1.0, matmul_tflops=1.0), deadline=0.0, l2_bytes=0)
    assert timer.calls == []
    assert all("time budget" in r["error"] for r in rows) and len(rows) == 2


def test_dream_head_at_dream_7b_shapes():
    import torch

    ctx = bk.Ctx(False, "cpu", torch.bfloat16, torch.Generator().manual_seed(0), "eager", "default")
    by = {c.shape: c for c in bk.build_cases(bk.model_config(), bk.Regime(batches=(1, 32)), ctx)
          if c.op == "dream_head"}  # inputs are made lazily: nothing of 7B size is allocated
    assert set(by) == {"B1-M32-V152064-d3584", "B32-M1024-V152064-d3584"}
    c = by["B32-M1024-V152064-d3584"]
    assert c.flops == 2 * 1024 * 152064 * 3584 and c.nbytes == 2 * (152064 * 3584 + 1024 * 3584) + 12 * 1024
    assert {"torch", "torch-compile", "triton", "cublas-matmul"} == set(c.providers)
    assert "dream_head" in bk.OPS and "dream_head" not in bk.DECODE_OPS
