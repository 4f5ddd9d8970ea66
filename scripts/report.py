#!/usr/bin/env python
"""Render an ablation CSV (``scripts/ablate.py``) into ``report.md`` and PNG plots (matplotlib, Agg).

    python scripts/report.py ablations-tiny/ablation.csv        # ablate.py's example's CSV; writes next to it
    python scripts/report.py ablations-tiny/ablation.csv --out report-tiny

``--notes FILE`` adds a hand-written interpretation (markdown) after the findings. Plots keep tied series
visible (each its own marker and line style, nudged a few points vertically).

Plots: accuracy vs NFE per remasking policy, accuracy vs block length, accuracy vs temperature and
CFG scale, speed of the cache policies, and speed vs accuracy of every setting. The report opens with
a table that checks three published findings (LLaDA: low-confidence remasking beats random and
accuracy falls with fewer steps; Fast-dLLM: a confidence threshold keeps accuracy at far fewer NFE),
each judged against a noise margin of two standard errors of the accuracy difference.

When the CSV holds several runs (``--append``), the report uses the (model, device, ops, dtype) of the
last row and, within it, the last row of each (study, setting, task).
"""
from __future__ import annotations

import csv
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

__all__ = ["load_rows", "findings", "pareto_front", "label_front", "render", "main"]

NUMERIC = {"n": int, "correct": int, "accuracy": float, "nfe": float, "nfe_per_token": float, "seconds": float,
           "tokens_per_s": float, "gen_length": int, "block_length": int, "steps": int, "threshold": float,
           "factor": float, "temperature": float, "cfg_scale": float, "seed": int, "batch_size": int}
SETTING = ("gen_length", "block_length", "steps", "remasking", "threshold", "factor", "temperature", "cfg_scale",
           "cache")
RUN = ("model", "device_name", "ops", "dtype")
FAR_FEWER = 0.5   # "far fewer NFE": at most this share of the baseline's NFE


# ----------------------------------------------------------------------------------------------- data
def _conv(row: Dict[str, str]) -> Dict:
    out = dict(row)
    for k, f in NUMERIC.items():
        v = row.get(k, "")
        out[k] = f(v) if v not in ("", None) else None
    return out


def load_rows(path: str) -> List[Dict]:
    """Rows of the last run in the CSV (see the module docstring), numbers converted, ``None`` for empty."""
    with open(path, newline="") as f:
        rows = [_conv(r) for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path} has no rows")
    run = tuple(rows[-1].get(k) for k in RUN)
    keep: "OrderedDict[tuple, Dict]" = OrderedDict()
    for r in rows:
        if tuple(r.get(k) for k in RUN) != run:
            continue
        key = (r["study"], r["task"]) + tuple(r[k] for k in SETTING)
        keep.pop(key, None)
        keep[key] = r
    return list(keep.values())


def _select(rows, study=None, task="all", **match) -> List[Dict]:
    out = []
    for r in rows:
        if study is not None and r["study"] != study:
            continue
        if task is not None and r["task"] != task:
            continue
        if all(r.get(k) == v for k, v in match.items()):
            out.append(r)
    return out


def _tasks(rows) -> List[str]:
    ts = list(OrderedDict.fromkeys(r["task"] for r in rows))
    return (["all"] if "all" in ts else []) + [t for t in ts if t != "all"]


def _margin(a: Dict, b: Dict) -> float:
    """Two standard errors of the difference of two accuracies (at least one problem's worth)."""
    var = sum(r["accuracy"] * (1 - r["accuracy"]) / max(1, r["n"]) for r in (a, b))
    return max(2 * math.sqrt(var), 1.0 / max(1, min(a["n"], b["n"])))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def label(r: Dict) -> str:
    """A short name of a setting: policy, steps, block length, and what differs from the defaults."""
    s = f"{r['policy']} s{r['steps']} b{r['block_length']}"
    if r["temperature"]:
        s += f" T{r['temperature']:g}"
    if r["cfg_scale"]:
        s += f" cfg{r['cfg_scale']:g}"
    if r["cache"] != "none":
        s += f" {r['cache']}"
    return s


# ------------------------------------------------------------------------------------------- findings
def _lc_vs_random(rows, task):
    pairs = []
    for st in ("steps", "remasking"):
        lcs = {(r["steps"], r["block_length"]): r for r in _select(rows, st, task, remasking="low_confidence",
                                                                    threshold=None, factor=None)}
        for r in _select(rows, st, task, remasking="random"):
            k = (r["steps"], r["block_length"])
            if k in lcs and k not in [p[0] for p in pairs]:
                pairs.append((k, lcs[k], r))
    return sorted(pairs, key=lambda p: -p[0][0])


def _finding_remasking(rows) -> Dict:
    name = "Low-confidence remasking beats random remasking (LLaDA)"
    pairs = _lc_vs_random(rows, "all")
    if not pairs:
        return {"finding": name, "status": "not run", "observed": "needs the steps or remasking study", "where_not": []}
    wins = [lc["accuracy"] - rd["accuracy"] > _margin(lc, rd) for _, lc, rd in pairs]
    ties = [abs(lc["accuracy"] - rd["accuracy"]) <= _margin(lc, rd) for _, lc, rd in pairs]
    status = "yes" if all(wins) else ("partly" if any(wins) and all(w or t for w, t in zip(wins, ties)) else "no")
    obs = "; ".join(f"{k[0]} steps: {_pct(lc['accuracy'])} vs {_pct(rd['accuracy'])}" for k, lc, rd in pairs)
    where = []
    for task in _tasks(rows):
        pairs_t = _lc_vs_random(rows, task)
        bad = [f"{k[0]} steps {_pct(lc['accuracy'])} vs {_pct(rd['accuracy'])}"
               for k, lc, rd in pairs_t if not lc["accuracy"] - rd["accuracy"] > _margin(lc, rd)]
        if task == "all" or not bad:
            continue
        if all(lc["accuracy"] == rd["accuracy"] == 1.0 for _, lc, rd in pairs_t):
            where.append(f"{task}: both 100% at every step count (ceiling)")
        else:
            where.append(f"{task}: low-confidence not better than random at " + ", ".join(bad))
    return {"finding": name, "status": status, "observed": "low-confidence vs random, all tasks: " + obs,
            "where_not": where}


def _steps_series(rows, task, remasking="low_confidence"):
    rs = _select(rows, "steps", task, remasking=remasking)
    return sorted(rs, key=lambda r: -r["steps"])


def _finding_steps(rows) -> Dict:
    name = "Accuracy falls as the number of steps shrinks (LLaDA)"
    s = _steps_series(rows, "all")
    if len(s) < 2:
        return {"finding": name, "status": "not run", "observed": "needs the steps study", "where_not": []}

    def judge(series):
        fall = series[0]["accuracy"] - series[-1]["accuracy"] > _margin(series[0], series[-1])
        rises = [(a, b) for a, b in zip(series, series[1:]) if b["accuracy"] - a["accuracy"] > _margin(a, b)]
        return fall, rises

    fall, rises = judge(s)
    status = "yes" if fall and not rises else ("partly" if fall else "no")
    obs = "low-confidence, all tasks: " + " -> ".join(f"{r['steps']} steps {_pct(r['accuracy'])}" for r in s)
    rnd = _steps_series(rows, "all", "random")
    if rnd:
        obs += "; random: " + " -> ".join(f"{r['steps']} {_pct(r['accuracy'])}" for r in rnd)
    where = []
    for task in _tasks(rows):
        ser = _steps_series(rows, task)
        if len(ser) < 2 or task == "all":
            continue
        f, rs = judge(ser)
        if all(r["accuracy"] == 1.0 for r in ser):
            where.append(f"{task}: 100% at every step count (ceiling)")
            continue
        if not f:
            where.append(f"{task}: no significant fall from {ser[0]['steps']} to {ser[-1]['steps']} steps "
                         f"({_pct(ser[0]['accuracy'])} -> {_pct(ser[-1]['accuracy'])})")
        for a, b in rs:
            where.append(f"{task}: accuracy rises from {a['steps']} to {b['steps']} steps "
                         f"({_pct(a['accuracy'])} -> {_pct(b['accuracy'])})")
    return {"finding": name, "status": status, "observed": obs, "where_not": where}


def _baseline(rows, task):
    for st in ("remasking", "steps"):
        bs = [r for r in _select(rows, st, task, remasking="low_confidence", threshold=None, factor=None)
              if r["steps"] == r["gen_length"]]
        if bs:
            return bs[0]
    return None


def _threshold_verdict(rows, task):
    base = _baseline(rows, task)
    ths = sorted((r for r in _select(rows, "remasking", task) if r["threshold"] is not None), key=lambda r: r["nfe"])
    if base is None or not ths:
        return None, base, ths
    good = [r for r in ths if base["accuracy"] - r["accuracy"] <= _margin(base, r)]
    far = [r for r in good if r["nfe"] <= FAR_FEWER * base["nfe"]]
    return (far[0] if far else None), base, ths


def _finding_threshold(rows) -> Dict:
    name = "A confidence threshold keeps accuracy at far fewer NFE (Fast-dLLM)"
    best, base, ths = _threshold_verdict(rows, "all")
    if base is None or not ths:
        return {"finding": name, "status": "not run", "observed": "needs the remasking study", "where_not": []}
    obs = (f"baseline (low-confidence, {base['steps']} steps) {_pct(base['accuracy'])} at {base['nfe']:.1f} NFE; "
           + "; ".join(f"threshold {r['threshold']:g}: {_pct(r['accuracy'])} at {r['nfe']:.1f} NFE" for r in ths))
    if best is not None:
        status = "yes"
        lc = [r for r in _steps_series(rows, "all") if r["nfe"] <= best["nfe"] * 1.25]
        if lc:
            obs += (f". Fixed-step low-confidence at a similar budget ({lc[0]['steps']} steps, "
                    f"{lc[0]['nfe']:.1f} NFE): {_pct(lc[0]['accuracy'])}")
    else:
        within = [r for r in ths if base["accuracy"] - r["accuracy"] <= _margin(base, r) and r["nfe"] < base["nfe"]]
        status = "partly" if within else "no"
    where = []
    for task in _tasks(rows):
        b, bs, ts = _threshold_verdict(rows, task)
        if task != "all" and bs is not None and ts and b is None:
            cheapest = ts[0]
            where.append(f"{task}: no threshold within the margin of the baseline ({_pct(bs['accuracy'])}) at <= "
                         f"{FAR_FEWER:.0%} of its NFE (cheapest: threshold {cheapest['threshold']:g}, "
                         f"{_pct(cheapest['accuracy'])} at {cheapest['nfe']:.1f} NFE)")
    return {"finding": name, "status": status, "observed": obs, "where_not": where}


def findings(rows: Sequence[Dict]) -> List[Dict]:
    """The three published findings, each ``{finding, status (yes|partly|no|not run), observed, where_not}``."""
    return [_finding_remasking(rows), _finding_steps(rows), _finding_threshold(rows)]


# ---------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ylim(ax, accs) -> None:
    """Accuracy axis from a round value below the lowest point to just above 1 (ceiling effects stay visible)."""
    lo = min(accs) if accs else 0.0
    lo = max(0.0, math.floor((lo - 0.02) * 20) / 20)
    ax.set_ylim(lo, 1.0 + 0.04 * (1.0 - lo))


def _panels(plt, tasks, title):
    n = len(tasks)
    cols = min(n, 2)
    rows_ = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(5.2 * cols, 3.8 * rows_), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, list(axes.flat[:n])


MARKERS = "osD^vP*X"
LINESTYLES = ("-", "--", ":", "-.")
NUDGE_PT = 2.5   # vertical display offset between series, in points


def _series_style(ax, k: int, n: int) -> Dict:
    """Plot keywords that keep series ``k`` of ``n`` visible where values coincide: its own marker, line style
    and marker size, alternately hollow, and a small vertical display offset (points, not data units)."""
    from matplotlib.transforms import offset_copy

    dy = (k - (n - 1) / 2) * NUDGE_PT
    return dict(marker=MARKERS[k % len(MARKERS)], linestyle=LINESTYLES[k % len(LINESTYLES)],
                markersize=max(3.5, 7.5 - 1.2 * k), markerfacecolor="none" if k % 2 else None,
                transform=offset_copy(ax.transData, fig=ax.figure, x=0, y=dy, units="points"))


def _nudged_plot(ax, xs, ys, k: int, n: int, **kw) -> None:
    """``ax.plot`` with :func:`_series_style`; the data limits are added by hand because matplotlib's
    autoscaling does not follow a line drawn with an offset transform."""
    ax.plot(xs, ys, **_series_style(ax, k, n), **kw)
    ax.update_datalim(list(zip(xs, ys)))
    ax.autoscale_view()


NUDGE_NOTE = "series nudged a few points vertically so equal values stay visible"


def plot_acc_vs_nfe(rows, path) -> bool:
    plt = _plt()
    tasks = _tasks([r for r in rows if r["study"] in ("steps", "remasking")])
    if not tasks:
        return False
    fig, axes = _panels(plt, tasks, f"Accuracy vs NFE per remasking policy ({NUDGE_NOTE})")
    for ax, task in zip(axes, tasks):
        ax.set_xscale("log", base=2)
        accs, series = [], []
        for rem, color in (("low_confidence", "C0"), ("random", "C3")):
            s = sorted(_select(rows, "steps", task, remasking=rem), key=lambda r: r["nfe"])
            if s:
                series.append((s, color, f"{rem} (steps)"))
        for key, color in (("threshold", "C2"), ("factor", "C4")):
            s = sorted((r for r in _select(rows, "remasking", task) if r[key] is not None), key=lambda r: r["nfe"])
            if s:
                series.append((s, color, f"{key} " + ", ".join(f"{r[key]:g}" for r in s)))
        for k, (s, color, name) in enumerate(series):
            _nudged_plot(ax, [r["nfe"] for r in s], [r["accuracy"] for r in s], k, len(series), color=color,
                         label=name)
            accs += [r["accuracy"] for r in s]
        ax.set_xlabel("NFE per problem (mean)")
        ax.set_ylabel("accuracy")
        _ylim(ax, accs)
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_acc_vs_block_length(rows, path) -> bool:
    plt = _plt()
    tasks = _tasks(_select(rows, "block_length", None))
    if not tasks:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.set_xscale("log", base=2)
    for k, task in enumerate(tasks):
        s = sorted(_select(rows, "block_length", task), key=lambda r: r["block_length"])
        _nudged_plot(ax, [r["block_length"] for r in s], [r["accuracy"] for r in s], k, len(tasks), label=task,
                     lw=2.5 if task == "all" else 1.2, color="k" if task == "all" else f"C{k}")
    ax.set_xlabel("block length (one token per step)")
    ax.set_ylabel("accuracy")
    _ylim(ax, [r["accuracy"] for r in _select(rows, "block_length", None)])
    ax.set_title("Accuracy vs block length")
    ax.text(0.01, 0.01, NUDGE_NOTE, transform=ax.transAxes, fontsize=6, color="gray")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_knobs(rows, path) -> bool:
    plt = _plt()
    studies = [(s, k) for s, k in (("temperature", "temperature"), ("cfg", "cfg_scale")) if _select(rows, s, None)]
    if not studies:
        return False
    fig, axes = plt.subplots(1, len(studies), figsize=(5.2 * len(studies), 3.8), squeeze=False)
    for ax, (st, key) in zip(axes.flat, studies):
        ts = _tasks(_select(rows, st, None))
        for k, task in enumerate(ts):
            s = sorted(_select(rows, st, task), key=lambda r: r[key])
            _nudged_plot(ax, [r[key] for r in s], [r["accuracy"] for r in s], k, len(ts), label=task,
                         lw=2.5 if task == "all" else 1.2, color="k" if task == "all" else f"C{k}")
        ax.text(0.01, 0.01, NUDGE_NOTE, transform=ax.transAxes, fontsize=6, color="gray")
        ax.set_xlabel(key)
        ax.set_ylabel("accuracy")
        _ylim(ax, [r["accuracy"] for r in _select(rows, st, None)])
        ax.set_title(f"Accuracy vs {key}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_cache(rows, path) -> bool:
    plt = _plt()
    s = _select(rows, "cache", "all") or _select(rows, "cache", None)
    if not s:
        return False
    policies = list(OrderedDict.fromkeys(r["policy"] for r in s))
    caches = list(OrderedDict.fromkeys(r["cache"] for r in s))
    fig, ax = plt.subplots(figsize=(6, 3.8))
    w = 0.8 / len(policies)
    for j, pol in enumerate(policies):
        for i, c in enumerate(caches):
            r = next((r for r in s if r["policy"] == pol and r["cache"] == c), None)
            if r is None or r["tokens_per_s"] is None:
                continue
            x = i + (j - (len(policies) - 1) / 2) * w
            ax.bar(x, r["tokens_per_s"], w, color=f"C{j}", label=pol if i == 0 else None)
            ax.annotate(f"{_pct(r['accuracy'])}\n{r['nfe']:.0f} NFE", (x, r["tokens_per_s"]), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(range(len(caches)), caches)
    ax.set_ylabel("tokens/s")
    ax.set_title(f"Cache policies (block length {s[0]['block_length']}): speed, labels = accuracy, NFE")
    ax.margins(y=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def pareto_front(pts: Sequence[Dict]) -> List[Dict]:
    """Settings no faster setting beats or ties in accuracy, fastest first."""
    front, best = [], -1.0
    for r in sorted(pts, key=lambda r: -r["tokens_per_s"]):
        if r["accuracy"] > best:
            best = r["accuracy"]
            front.append(r)
    return front


def label_front(ax, front: Sequence[Dict]) -> List:
    """Number the front's points (above, below or right of the point in turn, so neighbours' numbers do not
    collide) and list their labels beside the axes, where they cannot overlap.
    Returns ``[number annotations..., the list]``."""
    offsets = ((0, 7), (0, -13), (9, -3))  # above, below, right of the point
    out = [ax.annotate(str(i), (r["tokens_per_s"], r["accuracy"]), textcoords="offset points",
                       xytext=offsets[(i - 1) % 3], ha="center", fontsize=7, fontweight="bold")
           for i, r in enumerate(front, 1)]
    lines = [f"{i}: {label(r)}" for i, r in enumerate(front, 1)]
    out.append(ax.text(1.02, 1.0, "Pareto front\n(fastest first)\n\n" + "\n".join(lines), transform=ax.transAxes,
                       va="top", ha="left", fontsize=7, family="monospace"))
    return out


def plot_speed_vs_accuracy(rows, path) -> bool:
    plt = _plt()
    seen, pts = set(), []
    for r in rows:
        if r["task"] != "all" and "all" in {x["task"] for x in rows}:
            continue
        if r["tokens_per_s"] is None:
            continue
        key = tuple(r[k] for k in SETTING) + (r["task"],)
        if key in seen:
            continue
        seen.add(key)
        pts.append(r)
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(10, 5))
    studies = list(OrderedDict.fromkeys(r["study"] for r in pts))
    for k, st in enumerate(studies):
        s = [r for r in pts if r["study"] == st]
        ax.scatter([r["tokens_per_s"] for r in s], [r["accuracy"] for r in s], color=f"C{k}", label=st, s=30,
                   marker=MARKERS[k % len(MARKERS)], alpha=0.85)
    label_front(ax, pareto_front(pts))
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s (generated positions per second)")
    ax.set_ylabel("accuracy")
    _ylim(ax, [r["accuracy"] for r in pts])
    ax.set_title("Speed vs accuracy (each setting once; numbered: Pareto front)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


PLOTS = OrderedDict([
    ("acc_vs_nfe.png", plot_acc_vs_nfe),
    ("acc_vs_block_length.png", plot_acc_vs_block_length),
    ("acc_vs_temperature_cfg.png", plot_knobs),
    ("cache_speed.png", plot_cache),
    ("speed_vs_accuracy.png", plot_speed_vs_accuracy),
])


# ----------------------------------------------------------------------------------------------- text
def _study_table(rows, study) -> List[str]:
    tasks = [t for t in _tasks(_select(rows, study, None)) if t != "all"]
    settings = OrderedDict()
    for r in _select(rows, study, None):
        settings.setdefault(tuple(r[k] for k in SETTING), {})[r["task"]] = r
    if not settings:
        return []
    has_all = any("all" in v for v in settings.values())
    head = ["setting"] + tasks + (["all"] if has_all else []) + ["NFE", "tokens/s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, by_task in settings.items():
        ref = by_task.get("all") or next(iter(by_task.values()))
        cells = [label(ref)] + [_pct(by_task[t]["accuracy"]) if t in by_task else "" for t in tasks]
        if has_all:
            cells.append(_pct(ref["accuracy"]))
        cells += [f"{ref['nfe']:.1f}", f"{ref['tokens_per_s']:.0f}" if ref["tokens_per_s"] else ""]
        out.append("| " + " | ".join(cells) + " |")
    return out


def _n_summary(rows) -> str:
    """``steps, remasking: add 100, reverse 100; cfg: ...`` (problems per task, grouped by study)."""
    by = OrderedDict()
    for st in OrderedDict.fromkeys(r["study"] for r in rows):
        per = OrderedDict((r["task"], r["n"]) for r in rows if r["study"] == st and r["task"] != "all")
        by.setdefault(tuple(per.items()), []).append(st)
    return "; ".join(f"{', '.join(sts)}: " + ", ".join(f"{t} {n}" for t, n in per) for per, sts in by.items())


STUDY_TITLES = OrderedDict([
    ("steps", ("Steps", "acc_vs_nfe.png")),
    ("remasking", ("Remasking policy", None)),
    ("block_length", ("Block length", "acc_vs_block_length.png")),
    ("temperature", ("Temperature", "acc_vs_temperature_cfg.png")),
    ("cfg", ("Classifier-free guidance", None)),
    ("cache", ("Cache policy", "cache_speed.png")),
])


def render(csv_path: str, out: Optional[str] = None, notes: Optional[str] = None) -> str:
    """Write ``report.md`` and the PNGs into ``out`` (default: the CSV's folder); returns the report path.
    ``notes``: a markdown file included after the findings (an interpretation written by hand)."""
    rows = load_rows(csv_path)
    out = out or os.path.dirname(os.path.abspath(csv_path))
    os.makedirs(out, exist_ok=True)
    written = [name for name, fn in PLOTS.items() if fn(rows, os.path.join(out, name))]
    r0 = rows[-1]
    shas = list(OrderedDict.fromkeys(r["git_sha"] for r in rows))
    sha = ", ".join(x[:12] + ("+dirty" if x.endswith("+dirty") else "") for x in shas)
    L = [f"# Decoding ablations: `{r0['model']}`", ""]
    L += [f"{r0['device_name']}, ops `{r0['ops']}`, {r0['dtype']}, torch {r0['torch']}, triton {r0['triton']}, "
          f"python {r0['python']}, git `{sha}`, {r0['timestamp']}.",
          f"Held-out problems per task: {_n_summary(rows)}; scorer `{r0['scorer']}`; gen length {r0['gen_length']}; "
          f"seed {r0['seed']}; batch size {r0['batch_size']}.", ""]
    L += ["## Published findings: reproduced?", "",
          "| finding | reproduced? | observed |", "|---|---|---|"]
    fs = findings(rows)
    for f in fs:
        L.append(f"| {f['finding']} | **{f['status']}** | {f['observed']} |")
    L += ["", "Judged on the pooled accuracy (`all`); a difference counts when it exceeds two standard errors of "
          "the difference of two binomial accuracies. \"Far fewer NFE\" means at most "
          f"{FAR_FEWER:.0%} of the baseline's NFE.", ""]
    nots = [(f["finding"], w) for f in fs for w in f["where_not"]]
    if nots:
        L += ["Where a finding does not hold (per task, same margin):", ""]
        L += [f"- {name.split(' (')[0]}: {w}" for name, w in nots]
        L.append("")
    if notes:
        with open(notes) as f:
            L += ["## Interpretation", "", f.read().strip(), ""]
    for study, (title, png) in STUDY_TITLES.items():
        table = _study_table(rows, study)
        if not table:
            continue
        L += [f"## {title}", ""]
        if png and png in written:
            L += [f"![{title}]({png})", ""]
        L += table + [""]
    if "speed_vs_accuracy.png" in written:
        L += ["## Speed vs accuracy", "", "![speed vs accuracy](speed_vs_accuracy.png)", ""]
    L += ["## Definitions", "",
          "- **NFE**: forward passes per problem (mean), as counted by `decode.generate` (a forward counts for "
          "the rows still decoding; with CFG each forward runs the conditional and unconditional batch together).",
          "- **tokens/s**: generated positions (`n * gen_length`) per second of wall time inside `generate` "
          "(batches of prompts sorted by length; host-synchronised on CUDA). The `block` cache stops a row once it "
          "has committed an end token, so it skips work after short answers.",
          "- Settings: `policy sSTEPS bBLOCK` plus temperature `T`, guidance `cfg` and cache when not default.", ""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return path


def main(csv_path: str, out: Optional[str] = None, notes: Optional[str] = None) -> str:
    path = render(csv_path, out, notes)
    print(f"[report] wrote {path}")
    return path


def parse_args(argv=None) -> Dict:
    """Keyword arguments of :func:`main`; a missing or unreadable CSV or notes file is a one-line error."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cliutil

    ap = cliutil.ArgumentParser(prog=os.path.basename(__file__), description=__doc__)
    ap.add_argument("csv_path", help="ablation.csv written by scripts/ablate.py")
    ap.add_argument("--out", help="folder for report.md and PNGs (default: next to the CSV)")
    ap.add_argument("--notes", help="markdown file to include after the findings (interpretation)")
    a = ap.parse_args(argv)
    for arg, path in (("csv_path", a.csv_path), ("--notes", a.notes)):
        if path is not None and not os.path.isfile(path):
            ap.fail(arg, f"{path!r} is not a file")
    try:
        load_rows(a.csv_path)
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        ap.fail("csv_path", f"{a.csv_path!r} is not an ablation CSV of scripts/ablate.py ({e!r})")
    return dict(csv_path=a.csv_path, out=a.out, notes=a.notes)


if __name__ == "__main__":
    main(**parse_args())
