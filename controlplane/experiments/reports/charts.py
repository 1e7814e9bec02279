"""Charts for documents (HTML, PDF, slides), drawn with matplotlib from the comparison selector's dict.

Every series comes from `comparison.experiment_comparison` / `compare_trials` (`charts` and `pareto`) or, for
the arrival rate, from `workers.workload.rate_curve` (the editor's preview): nothing here computes a figure.
Costs are drawn in the comparison's cost unit (`display.cost_scale`), money written with `figures.format_usd`
and latencies with `comparison.format_ms`.

One function renders a chart to both forms: SVG text (inline in the HTML and PDF reports; glyphs as paths,
so the file needs no font) and PNG bytes (slides). Output is deterministic: no date in the SVG metadata and
a fixed id salt, so the same comparison gives the same bytes.

    for chart in report_charts(comparison, workloads=workloads):
        chart.svg, chart.png, chart.title, chart.caption
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # no display, and no pyplot state: each chart is its own Figure

import numpy as np  # noqa: E402
from matplotlib import rc_context  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from ..comparison import format_ms, format_percent  # noqa: E402
from ..figures import format_usd  # noqa: E402

WIDTH_IN, HEIGHT_IN = 7.6, 3.7  # fills an A4 or Letter text width at 100 %: 9-10 pt text stays readable
PNG_DPI = 150  # about 1,140 x 555 px: sharp on a 16:9 slide at half its width and more
RC = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs on every machine
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.labelsize": 9.5,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e6ea",
    "grid.linewidth": 0.6,
    "svg.fonttype": "path",  # self-contained: no font needed where the file is opened
    "svg.hashsalt": "slsbench-report",  # deterministic ids
    "path.simplify": True,
}
# One colour per variant, the same in every chart (tab10, then tab20's lighter half).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")
SLO_COLOUR = "#b42318"
VERDICT_MARKERS = {"met": ("o", "#1a7f37"), "not_met": ("X", "#b42318"), "inconclusive": ("D", "#b7791f"),
                   None: ("s", "#6e7781")}
BREAKDOWN_COLOURS = {"dispatch_lag": "#6e7781", "cold_start": "#1f77b4", "platform_delay_modelled": "#9467bd",
                     "batch_wait": "#ff7f0e", "queue_wait": "#d62728", "compute": "#2ca02c"}
SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
ORDER = ("cdf", "pareto", "knee", "p99_over_time", "breakdown", "arrival_rate")


@dataclass(frozen=True)
class Chart:
    key: str  # one of ORDER
    title: str
    caption: str  # what the chart shows and how to read it
    svg: str | None  # an <svg> element (no XML prolog), ready to inline in HTML
    png: bytes | None

    @property
    def svg_data_uri(self) -> str:
        """The SVG as a data: URI, for an <img> (the PDF: drawn by WeasyPrint's SVG renderer)."""
        return "data:image/svg+xml;base64," + base64.b64encode((self.svg or "").encode("utf-8")).decode("ascii")


def colours(comparison: dict) -> dict[str, str]:
    """Row key -> colour, in table order: a variant has one colour in every chart."""
    return {r["key"]: PALETTE[i % len(PALETTE)] for i, r in enumerate(comparison.get("rows") or [])}


def render(fig: Figure, *, svg: bool = True, png: bool = True, svg_text: str = "path"
           ) -> tuple[str | None, bytes | None]:
    """A figure as (SVG text, PNG bytes): the one place charts are written out. `svg_text`: "path" writes
    glyphs as outlines (the file needs no font: the HTML report), "text" as text in DejaVu Sans (a quarter
    of the nodes, and searchable: the PDF, which embeds the font)."""
    svg_out = png_bytes = None
    rc = dict(RC, **({"svg.fonttype": "none"} if svg_text == "text" else {}))
    with rc_context(rc):
        if svg:
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata=SVG_METADATA)
            svg_out = _inline_svg(buf.getvalue())
        if png:
            out = io.BytesIO()
            fig.savefig(out, format="png", dpi=PNG_DPI, metadata={"Software": None})
            png_bytes = out.getvalue()
    return svg_out, png_bytes


def _inline_svg(text: str) -> str:
    """Drop the XML prolog, DOCTYPE (its DTD address) and comments so the element inlines in HTML; scale it to
    the page's width."""
    start = text.index("<svg")
    # matplotlib writes each text as a comment beside its glyphs: drop them (a label is never markup here)
    svg = re.sub(r"<!--.*?-->\s*", "", text[start:], flags=re.S).strip()
    # width/height in pt from matplotlib: keep the aspect ratio (viewBox) but let the page set the width
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 width="100%" height="auto"'
                  r' preserveAspectRatio="xMidYMid meet"', svg, count=1)


def _figure() -> Figure:
    with rc_context(RC):
        fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), layout="constrained")
        fig.add_subplot()
    return fig


def _ms_axis(x, _pos=None) -> str:
    """Tick labels in ms, plain: 0.01, 0.1, 1, 10, 100, 1,000."""
    return f"{x:,.4g}" if x > 0 else "0"


def _legend(ax, n: int) -> None:
    if n:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, ncol=1 if n <= 12 else 2,
                  handlelength=1.6)


def _label(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- the charts -------------------------------------------------------------------------------------------------
def _thin(x: np.ndarray, y: np.ndarray, dx_decades: float = 0.008, dy: float = 0.003
          ) -> tuple[np.ndarray, np.ndarray]:
    """A CDF's points as drawn: a point is kept when it moves the curve by at least `dx_decades` on the log
    latency axis or `dy` of all requests (each about half a point on the page) since the last kept
    one; the first and last are always kept. The selector's up to 2,000 points a series become a few hundred
    that draw the same curve (a 10-variant SVG about half the size, and the PDF lays it out faster)."""
    n = x.shape[0]
    if n <= 2:
        return x, y
    lx = np.log10(np.maximum(x, 1e-9))
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    last_x, last_y = lx[0], y[0]
    for i in range(1, n - 1):
        if abs(lx[i] - last_x) >= dx_decades or abs(y[i] - last_y) >= dy:
            keep[i] = True
            last_x, last_y = lx[i], y[i]
    return x[keep], y[keep]


def cdf_figure(comparison: dict) -> Figure | None:
    charts = comparison.get("charts") or {}
    cdf = charts.get("cdf") or {}
    series = [s for s in cdf.get("series") or [] if s.get("points")]
    if not series:
        return None
    col = colours(comparison)
    slo = comparison["slo"]
    fig = _figure()
    with rc_context(RC):
        ax = fig.axes[0]
        for s in series:
            pts = np.asarray(s["points"], dtype=float)
            x, y = _thin(pts[:, 0], pts[:, 1])
            keep = x > 0
            label = _label(s["label"])
            share = s.get("unfinished_share")
            if share:
                label += f" ({format_percent(share)} unfinished)"
            line, = ax.step(x[keep], y[keep], where="post", color=col.get(s["key"]), linewidth=1.4, label=label)
            if share and keep.any():
                # the curve stops below 1 by its unfinished share: mark where it stops
                ax.plot([x[keep][-1]], [y[keep][-1]], marker=">", color=line.get_color(), markersize=6)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_ms_axis))
        ax.axvline(slo["latency_ms"], color=SLO_COLOUR, linestyle="--", linewidth=1.2,
                   label=f"SLO {slo['label']} ≤ {format_ms(slo['latency_ms'])}")
        ax.axhline(slo["percentile"] / 100.0, color=SLO_COLOUR, linestyle=":", linewidth=1.0)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("latency from intended arrival (ms, log scale)")
        ax.set_ylabel("fraction of all requests")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v * 100:.0f} %"))
        _legend(ax, len(series) + 1)
    return fig


def pareto_figure(comparison: dict) -> Figure | None:
    pareto = comparison.get("pareto") or {}
    points = [p for p in pareto.get("points") or [] if p.get("x") is not None and p.get("y") is not None]
    if not points:
        return None
    scale = comparison["display"]["cost_scale"]
    factor = float(scale["factor"])
    slo = comparison["slo"]
    col = colours(comparison)
    fig = _figure()
    with rc_context(RC):
        ax = fig.axes[0]
        by_key = {p["key"]: p for p in points}
        front = [by_key[k] for k in pareto.get("front") or [] if k in by_key]
        if len(front) > 1:
            ax.plot([p["x"] * factor for p in front], [p["y"] for p in front], color="#57606a", linewidth=1.2,
                    linestyle="-", zorder=1, label="Pareto front")
        seen_verdicts = set()
        for p in points:
            x, y = p["x"] * factor, p["y"]
            xerr = yerr = None
            if p.get("x_low") is not None and p.get("x_high") is not None:
                xerr = [[max(x - p["x_low"] * factor, 0)], [max(p["x_high"] * factor - x, 0)]]
            if p.get("y_low") is not None and p.get("y_high") is not None:
                yerr = [[max(y - p["y_low"], 0)], [max(p["y_high"] - y, 0)]]
            if xerr or yerr:
                ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="none", ecolor=col.get(p["key"], "#999"),
                            elinewidth=0.9, alpha=0.7, zorder=2)
            marker, edge = VERDICT_MARKERS.get(p.get("verdict"), VERDICT_MARKERS[None])
            verdict_label = {"met": "met", "not_met": "not met", "inconclusive": "inconclusive"}.get(
                p.get("verdict"), "no verdict")
            ax.scatter([x], [y], marker=marker, s=70 if p.get("on_front") else 44, color=col.get(p["key"]),
                       edgecolors=edge, linewidths=1.6 if p.get("on_front") else 0.8, zorder=3,
                       label=None if verdict_label in seen_verdicts else f"SLO {verdict_label}")
            seen_verdicts.add(verdict_label)
            ax.annotate(_label(p["label"], 22), (x, y), xytext=(5, 4), textcoords="offset points", fontsize=8)
        ax.axhline(slo["latency_ms"], color=SLO_COLOUR, linestyle="--", linewidth=1.2,
                   label=f"SLO {slo['label']} ≤ {format_ms(slo['latency_ms'])}")
        ax.set_xlabel(f"serverless cost {scale['label']} (USD)")
        ax.set_ylabel(f"{slo['label']} latency (ms)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: format_usd(v) if v > 0 else "$0"))
        ax.yaxis.set_major_formatter(FuncFormatter(_ms_axis))
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        # the legend's markers in neutral grey: colour is the variant, shape the verdict
        leg = ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        for h in leg.legend_handles:
            if hasattr(h, "set_facecolor") and h.get_label() != "Pareto front":
                h.set_facecolor("#d0d7de")
    return fig


def p99_time_figure(comparison: dict) -> Figure | None:
    charts = comparison.get("charts") or {}
    block = charts.get("p99_over_time") or {}
    series = [s for s in block.get("series") or [] if s.get("points")]
    if not series:
        return None
    col = colours(comparison)
    slo = comparison["slo"]
    fig = _figure()
    with rc_context(RC):
        ax = fig.axes[0]
        highest = 0.0
        lowest = math.inf
        for s in series:
            t = np.asarray([p[0] for p in s["points"]], dtype=float)
            v = np.asarray([np.nan if p[1] is None else p[1] for p in s["points"]], dtype=float)
            finite = v[np.isfinite(v) & (v > 0)]
            if finite.size:
                highest, lowest = max(highest, float(finite.max())), min(lowest, float(finite.min()))
            label = _label(s["label"]) + (f" (repeat {s['repeat']})" if s.get("repeat") is not None else "")
            ax.plot(t, v, color=col.get(s["key"]), linewidth=1.2, label=label)
        ax.axhline(slo["latency_ms"], color=SLO_COLOUR, linestyle="--", linewidth=1.2,
                   label=f"SLO {format_ms(slo['latency_ms'])}")
        if lowest < math.inf and highest / max(lowest, 1e-9) > 50:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(FuncFormatter(_ms_axis))
        ax.set_xlabel("time into the trial (s)")
        ax.set_ylabel("p99 per window (ms)")
        _legend(ax, len(series) + 1)
    return fig


def knee_figure(comparison: dict) -> Figure | None:
    """p99 against offered rate per variant from its capacity search's probes (marker: the verdict), the SLO line."""
    block = (comparison.get("charts") or {}).get("knee") or {}
    series = [s for s in block.get("series") or [] if s.get("points")]
    if not series:
        return None
    col = colours(comparison)
    slo_ms = block["slo_ms"]
    fig = _figure()
    with rc_context(RC):
        ax = fig.axes[0]
        top = max([slo_ms * 1.5] + [p[1] for s in series for p in s["points"] if p[1] is not None])
        top = min(top, slo_ms * 10)
        for s in series:
            x = np.asarray([p[0] for p in s["points"]], dtype=float)
            y = np.asarray([top if p[1] is None else min(p[1], top) for p in s["points"]], dtype=float)
            label = _label(s["label"]) + (" (simulated)" if s.get("simulated") else "")
            ax.plot(x, y, color=col.get(s["key"]), linewidth=1.2, label=label)
            for xi, yi, p in zip(x, y, s["points"], strict=True):
                marker, colour = VERDICT_MARKERS.get(p[2], ("o", "#999"))[:2]
                ax.scatter([xi], [yi], marker=marker, color=colour, s=28, zorder=3)
        ax.axhline(slo_ms, color=SLO_COLOUR, linestyle="--", linewidth=1.2, label=f"SLO {format_ms(slo_ms)}")
        ax.set_xlim(left=0)
        ax.set_ylim(0, top * 1.05)
        ax.yaxis.set_major_formatter(FuncFormatter(_ms_axis))
        ax.set_xlabel("offered rate (req/s)")
        ax.set_ylabel("p99 of the probe (ms)")
        _legend(ax, len(series) + 1)
    return fig


def breakdown_figure(comparison: dict) -> Figure | None:
    charts = comparison.get("charts") or {}
    block = charts.get("breakdown") or {}
    series = block.get("series") or []
    components = block.get("components") or []
    if not series or not any(v for s in series for v in (s.get("values") or {}).values()):
        return None
    labels = block.get("labels") or {}
    modelled = set(block.get("modelled") or [])
    with rc_context(RC):
        fig = Figure(figsize=(WIDTH_IN, max(2.2, 0.9 + 0.34 * len(series))), layout="constrained")
        ax = fig.add_subplot()
        names = [_label(s["label"]) for s in series]
        y = np.arange(len(series))[::-1]
        left = np.zeros(len(series))
        for comp in components:
            vals = np.asarray([float((s.get("values") or {}).get(comp) or 0.0) for s in series])
            if not vals.any():
                continue
            label = labels.get(comp, comp)
            ax.barh(y, vals, left=left, color=BREAKDOWN_COLOURS.get(comp, "#999"), height=0.6, label=label,
                    hatch="///" if comp in modelled else None, edgecolor="white" if comp not in modelled else "#3d2a5c",
                    linewidth=0.4)
            left += vals
        # no total beside a bar: a sum of medians is no figure of the comparison
        ax.set_axisbelow(True)
        ax.set_yticks(y, names)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("median time per request (ms; hatched: modelled, not measured)")
        ax.set_xlim(0, max(float(left.max()) * 1.05, 1e-6))
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(series) > 3 else -0.38), frameon=False,
                  ncol=min(6, len(components)))
    return fig


def arrival_figure(curves: Sequence[dict]) -> Figure | None:
    """curves: [{"label", "t_s", "rate_rps"}] from `workers.workload.rate_curve`, one per workload."""
    curves = [c for c in curves if c.get("t_s")]
    if not curves:
        return None
    fig = _figure()
    with rc_context(RC):
        ax = fig.axes[0]
        for i, c in enumerate(curves):
            ax.plot(c["t_s"], c["rate_rps"], color=PALETTE[i % len(PALETTE)], linewidth=1.4, label=c.get("label"))
        peak = max((max(c["rate_rps"], default=0.0) for c in curves), default=0.0)
        ax.set_ylim(0, peak * 1.15 if peak > 0 else 1.0)
        ax.set_xlabel("workload time (s)")
        ax.set_ylabel("intended arrivals (req/s)")
        if len(curves) > 1 or curves[0].get("label"):
            _legend(ax, len(curves))
    return fig


# ---- the set a report shows -------------------------------------------------------------------------------------
def _captions(comparison: dict) -> dict[str, tuple[str, str]]:
    slo = comparison.get("slo") or {}
    slo_text = f"{slo.get('label', 'p99')} ≤ {format_ms(slo.get('latency_ms'))}" if slo else "the SLO"
    scale = ((comparison.get("display") or {}).get("cost_scale") or {}).get("label", "per 1,000 requests")
    excluded = ((comparison.get("pareto") or {}).get("excluded")) or []
    ex = "; ".join(f"{e['key']}: {e['reason']}" for e in excluded)
    return {
        "cdf": ("Latency CDF", "Every request of each variant's repeats, pooled (log latency axis). The dashed "
                f"line is the SLO ({slo_text}), the dotted one its percentile. A curve stops below 100 % by "
                "its unfinished requests (▸ marks where), which count as beyond the run."),
        "pareto": (f"{slo.get('label', 'p99')} against cost",
                   f"{slo.get('label', 'p99')} against serverless cost {scale}: marker shape is the SLO verdict, "
                   "bars the min – max across repeats, the grey line the Pareto front (no variant is both "
                   f"cheaper and faster), the dashed line the SLO." + (f" Not drawn: {ex}." if ex else "")),
        "knee": ("p99 against offered rate", "Each variant's latest capacity search: p99 of each probe trial at its "
                 "offered rate (the workload's shape, its rate scaled); marker shape is the probe's verdict, a probe "
                 "whose p99 lay beyond the run is drawn at the top. Dashed: the SLO latency; the knee is where a "
                 "curve crosses it. Simulated searches are labelled."),
        "p99_over_time": ("p99 over time", "p99 per window of each variant's median repeat (by its SLO "
                          "percentile); gaps are windows where no request finished. Dashed: the SLO latency."),
        "breakdown": ("Where a request's time goes", "Median across repeats of each component of a request's "
                      "latency. The platform delay is modelled (added to measured latency), not measured."),
        "arrival_rate": ("Arrival rate", "The workload's intended arrival rate over workload time (open loop: "
                         "requests are sent on this schedule whatever the answers)."),
    }


def report_charts(comparison: dict, *, workloads: Sequence[dict] = (), svg: bool = True,
                  png: bool = True, only: Sequence[str] | None = None, svg_text: str = "path") -> list[Chart]:
    """The report's charts in ORDER, skipping those with no data. `workloads`: rate curves as for
    `arrival_figure`. `only`: a subset of ORDER (slides take the two key charts). `svg_text`: see `render`."""
    captions = _captions(comparison)
    builders = {"cdf": lambda: cdf_figure(comparison), "pareto": lambda: pareto_figure(comparison),
                "knee": lambda: knee_figure(comparison), "p99_over_time": lambda: p99_time_figure(comparison),
                "breakdown": lambda: breakdown_figure(comparison), "arrival_rate": lambda: arrival_figure(workloads)}
    out = []
    for key in ORDER:
        if only is not None and key not in only:
            continue
        fig = builders[key]()
        if fig is None:
            continue
        svg_out, png_bytes = render(fig, svg=svg, png=png, svg_text=svg_text)
        title, caption = captions[key]
        out.append(Chart(key=key, title=title, caption=caption, svg=svg_out, png=png_bytes))
    return out


def workload_curves(workloads, points: int = 200) -> list[dict]:
    """Rate curves of an experiment's workloads (`WorkloadSpec`s) with the editor preview's helper; a
    workload whose trace cannot be read is left out."""
    from workers.workload import TraceError, WorkloadError, rate_curve

    out = []
    for w in workloads:
        try:
            curve = rate_curve(w, points=points)
        except (TraceError, WorkloadError):
            continue
        label = f"{w.pattern}" + (f", function {w.function}" if w.function else "")
        if w.time_compression and w.time_compression != 1:
            label += f" (replayed {w.time_compression:g}× faster)"
        out.append({"label": label, **curve})
    return out
