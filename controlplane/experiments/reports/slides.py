"""Slides of a comparison (python-pptx, 16:9): about five slides for the meeting that decides.

1. the question and the SLO; 2. the answer and the recommendation; 3. the comparison table (a native table,
split over more slides when the variants do not fit); 4. the two key charts (latency CDF, SLO percentile
against cost) as PNG from `reports.charts`, the module the HTML and PDF reports use; 5. the method and the
caveats (continued on another slide when they do not fit).

Every figure is the comparison selector's, written as the comparison page writes it: table cells are the
page's own cells (`comparison_views._table`), sentences are the selector's (`recommendation.text`, flags,
notes). Layout rules: nothing under 12 pt; every text box is sized from an estimate of its wrapped lines
(a generous average glyph width) and its content is split over slides rather than cut off; every shape lies
inside the slide.
"""

from __future__ import annotations

import datetime
import io
import math
from collections.abc import Sequence

from pptx import Presentation
from pptx.dml.color import RGBColor
from pptx.enum.text import MSO_AUTO_SIZE
from pptx.util import Emu, Inches, Pt

from .. import comparison as C
from ..comparison_views import _table

SLIDE_W, SLIDE_H = Emu(12192000), Emu(6858000)  # 13.333 x 7.5 in: 16:9 exactly
MARGIN = Inches(0.5)
FONT = "Calibri"
MIN_PT = 12
TITLE_PT, BODY_PT, SMALL_PT = 30, 18, 14
TABLE_PT = 12
GLYPH_EM = 0.55  # average glyph width as a share of the font size: above Calibri's ~0.5, so estimates err long
LINE = 1.2  # line height as a share of the font size
INK = RGBColor(0x1F, 0x23, 0x28)
MUTED = RGBColor(0x57, 0x60, 0x6A)
HEAD_FILL = RGBColor(0xE9, 0xEC, 0xEF)
VERDICT_FILL = {"met": RGBColor(0xDA, 0xFB, 0xE1), "not_met": RGBColor(0xFF, 0xEB, 0xE9),
                "inconclusive": RGBColor(0xFF, 0xF8, 0xC5)}
BOX_PAD = Inches(0.1)  # python-pptx text frames default to 0.1 in left/right, 0.05 in top/bottom


# ---- measuring text -------------------------------------------------------------------------------------------
def lines_of(text: str, width_emu: int, pt: float) -> int:
    """Wrapped lines of `text` in a box `width_emu` wide at `pt` (an over-estimate: wide average glyphs)."""
    usable_pt = max((width_emu - 2 * BOX_PAD) / 12700.0, 1.0)
    per_line = max(int(usable_pt / (pt * GLYPH_EM)), 1)
    total = 0
    for para in text.split("\n"):
        words, n, length = para.split(" "), 1, 0
        for w in words:
            add = len(w) + (1 if length else 0)
            if length + add > per_line and length:
                n += 1 + (len(w) - 1) // per_line
                length = len(w) % per_line or per_line
            else:
                length += add
        total += n
    return total


def height_of(paragraphs: Sequence[str], width_emu: int, pt: float, space_pt: float = 0.0) -> int:
    lines = sum(lines_of(p, width_emu, pt) for p in paragraphs)
    return int((lines * pt * LINE + space_pt * max(len(paragraphs) - 1, 0)) * 12700 + 2 * Inches(0.05) + Pt(4))


# ---- building blocks ------------------------------------------------------------------------------------------
def _text(slide, left, top, width, paragraphs: Sequence[str], pt: float, *, bold=False, color=INK, bullets=False,
          space_pt: float = 0.0):
    height = height_of([("• " + p) if bullets else p for p in paragraphs], width, pt, space_pt)
    box = slide.shapes.add_textbox(Emu(left), Emu(top), Emu(width), Emu(height))
    tf = box.text_frame
    tf.word_wrap = True
    tf.auto_size = MSO_AUTO_SIZE.NONE
    for i, p in enumerate(paragraphs):
        para = tf.paragraphs[0] if i == 0 else tf.add_paragraph()
        if i and space_pt:
            para.space_before = Pt(space_pt)
        run = para.add_run()
        run.text = ("• " + p) if bullets else p
        run.font.size = Pt(pt)
        run.font.bold = bold
        run.font.name = FONT
        run.font.color.rgb = color
    return box


def _slide(prs, title: str):
    slide = prs.slides.add_slide(prs.slide_layouts[6])  # blank
    _text(slide, MARGIN, Inches(0.35), SLIDE_W - 2 * MARGIN, [title], TITLE_PT, bold=True)
    return slide


BODY_TOP = Inches(1.35)
BODY_BOTTOM = SLIDE_H - Inches(0.4)
BODY_W = SLIDE_W - 2 * MARGIN


def _chunks(items: list[str], width: int, pt: float, space: float, top: int) -> list[list[str]]:
    """Bullets split into the runs that fit between `top` and the bottom of a slide."""
    chunks: list[list[str]] = [[]]
    for item in items:
        trial = chunks[-1] + [item]
        if chunks[-1] and top + height_of(["• " + t for t in trial], width, pt, space) > BODY_BOTTOM:
            chunks.append([item])
        else:
            chunks[-1] = trial
    return chunks


def _columns_slides(prs, title: str, columns: list[tuple[str, list[str]]], pt: float = SMALL_PT) -> None:
    """Side-by-side columns of bullets under their headings, continued on more slides when they do not fit."""
    space = 6.0
    gap = Inches(0.4)
    width = int((BODY_W - gap * (len(columns) - 1)) / len(columns))
    head_h = height_of(["x"], width, BODY_PT)
    split = [_chunks(items, width, pt, space, BODY_TOP + head_h) for _, items in columns]
    for n in range(max(len(c) for c in split)):
        slide = _slide(prs, title if n == 0 else f"{title} (continued)")
        for i, (heading, _) in enumerate(columns):
            if n >= len(split[i]) or not split[i][n]:
                continue
            left = MARGIN + i * (width + gap)
            _text(slide, left, BODY_TOP, width, [heading], BODY_PT, bold=True)
            _text(slide, left, BODY_TOP + head_h, width, split[i][n], pt, bullets=True, space_pt=space)


# ---- what each slide says ---------------------------------------------------------------------------------------
def slo_text(data: dict) -> str:
    slo = data["slo"]
    if slo.get("latency_ms") is None:
        return "No SLO."
    s = f"{slo['label']} ≤ {C.format_ms(slo['latency_ms'])}"
    if slo.get("max_violation_rate") is not None:
        s += f", at most {C.format_percent(slo['max_violation_rate'])} of requests over it"
    if slo.get("min_throughput_rps"):
        s += f", at least {slo['min_throughput_rps']:g} req/s"
    return s


def _scope_title(data: dict) -> str:
    scope = data["scope"]
    exp = scope.get("experiment") or {}
    if exp:
        return f"{exp['name']} — run {scope['run']}" if scope.get("run") is not None else exp["name"]
    return "Pinned trials"


TABLE_COLUMNS = (("variant", 2.3), ("verdict", 1.45), ("slo", 1.25), ("interval", 2.1), ("violation_rate", 1.2),
                 ("serverless_per_1k_usd", 1.35), ("provisioned_per_1k_usd", 1.35), ("throughput_rps", 1.33),
                 ("capacity", 1.45))


def table_rows(data: dict, page: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, verdicts): the page's own cell texts for the slide's columns."""
    scale = data["display"]["cost_scale"]
    slo_metric = data["slo"]["metric"]
    header = ["Variant", "Verdict", data["slo"]["label"], "Interval", "Violations",
              f"Serverless {scale['label']}", f"Provisioned {scale['label']}", "Throughput (req/s)", "Capacity at SLO"]
    rows, verdicts = [], []
    for r in page["rows"]:
        cells = {c["key"]: c for c in r["cells"]}

        def text(key: str, cells=cells) -> str:
            c = cells.get(key)
            return "—" if c is None or c.get("empty") else c["text"]

        label = r["label"] + (" (baseline)" if r["baseline"] else "")
        rows.append([label, r["verdict"]["text"], text(slo_metric), r["interval"] or "—", text("violation_rate"),
                     text("serverless_per_1k_usd"), text("provisioned_per_1k_usd"), text("throughput_rps"),
                     r["capacity"]["text"] + (" (simulated)" if r["capacity"]["simulated"] else "")])
        verdicts.append(r["verdict"]["verdict"])
    return header, rows, verdicts


def _row_height(cells: Sequence[str], widths: Sequence[int], pt: float) -> int:
    return max(height_of([c], w, pt) for c, w in zip(cells, widths, strict=True))


def _table_slides(prs, data: dict, page: dict) -> None:
    header, rows, verdicts = table_rows(data, page)
    widths = [Inches(w) for _, w in TABLE_COLUMNS]
    scale = BODY_W / sum(widths)
    widths = [int(w * scale) for w in widths]
    head_h = _row_height(header, widths, TABLE_PT)
    chunks: list[list[int]] = [[]]
    used = head_h
    for i, row in enumerate(rows):
        h = _row_height(row, widths, TABLE_PT)
        if chunks[-1] and BODY_TOP + used + h > BODY_BOTTOM - Inches(0.5):
            chunks.append([])
            used = head_h
        chunks[-1].append(i)
        used += h
    for n, chunk in enumerate(chunks):
        title = "Comparison" if n == 0 else "Comparison (continued)"
        slide = _slide(prs, title)
        heights = [head_h] + [_row_height(rows[i], widths, TABLE_PT) for i in chunk]
        shape = slide.shapes.add_table(len(chunk) + 1, len(header), Emu(MARGIN), Emu(BODY_TOP), Emu(sum(widths)),
                                       Emu(sum(heights)))
        table = shape.table
        for j, w in enumerate(widths):
            table.columns[j].width = Emu(w)
        for i, h in enumerate(heights):
            table.rows[i].height = Emu(h)
        for j, text in enumerate(header):
            _cell(table.cell(0, j), text, bold=True, fill=HEAD_FILL)
        for i, idx in enumerate(chunk, start=1):
            for j, text in enumerate(rows[idx]):
                _cell(table.cell(i, j), text, fill=VERDICT_FILL.get(verdicts[idx]) if j == 1 else None)
        note_top = BODY_TOP + sum(heights) + Inches(0.1)
        note = ["Figures as on the comparison page: the median across repeats; " + data["pricing"]["note"]]
        if note_top + height_of(note, BODY_W, MIN_PT) <= BODY_BOTTOM:
            _text(slide, MARGIN, note_top, BODY_W, note, MIN_PT, color=MUTED)


def _cell(cell, text: str, *, bold: bool = False, fill=None) -> None:
    cell.text = ""
    tf = cell.text_frame
    tf.word_wrap = True
    run = tf.paragraphs[0].add_run()
    run.text = text
    run.font.size = Pt(TABLE_PT)
    run.font.bold = bold
    run.font.name = FONT
    run.font.color.rgb = INK
    if fill is not None:
        cell.fill.solid()
        cell.fill.fore_color.rgb = fill


def _answer_lines(data: dict, page: dict) -> list[str]:
    rec = data["recommendation"]
    lines = [rec["text"] or "No answer yet."]
    if rec.get("variant"):
        row = next(r for r in page["rows"] if r["key"] == rec["variant"])
        cells = {c["key"]: c for c in row["cells"]}
        slo_metric = data["slo"]["metric"]
        scale = data["display"]["cost_scale"]
        bits = [f"{data['slo']['label']} {cells[slo_metric]['text']}"]
        if row["interval"]:
            bits.append(row["interval"])
        bits.append(f"serverless {cells['serverless_per_1k_usd']['text']} {scale['label']}")
        lines.append(f"Recommended: {row['label']} — " + ", ".join(bits) + ".")
    counts = {"met": 0, "not_met": 0, "inconclusive": 0}
    for r in data["rows"]:
        v = r["verdict"]["verdict"]
        if v in counts:
            counts[v] += 1
    lines.append(f"{counts['met']} met, {counts['not_met']} not met, {counts['inconclusive']} inconclusive "
                 f"of {len(data['rows'])} variants.")
    return lines


def method_items(data: dict) -> list[str]:
    rows = data["rows"]
    items = ["Open loop: requests are sent on the workload's schedule whatever the answers; latency is measured "
             "from each request's intended arrival, so queueing and dispatch lag count.",
             "Requests that never finished count as beyond the run (+∞): a percentile that falls among them is "
             "written \"beyond the run\", never dropped."]
    methods = sorted({r["slo_interval"]["method"] for r in rows if r["slo_interval"].get("method")})
    if methods:
        items.append("SLO interval: " + "; ".join(methods) + " (one repeat: its moving-block bootstrap "
                     "interval; several: the min – max of the repeats).")
    compressions = sorted({r["time_compression"] for r in rows if r.get("time_compression")
                           and r["time_compression"] > 1})
    if compressions:
        items.append("Time compression: replayed " + ", ".join(f"{c:g}×" for c in compressions) + " faster.")
    delays = sorted({r["platform_delay_ms"] for r in rows if r.get("platform_delay_ms")})
    if delays:
        items.append("Cold starts include a MODELLED platform delay of " + ", ".join(f"{d:g} ms" for d in delays)
                     + ".")
    entry = data["pricing"].get("entry")
    price = data["pricing"]["note"]
    if entry and entry.get("source"):
        price += f" Source: {entry['source']}."
    items.append(price)
    hardware = sorted({" · ".join(x for x in (r.get("device"), r.get("isolation"), r.get("cpu_label")) if x)
                       for r in rows if r.get("device")})
    if hardware:
        items.append("Hardware: " + "; ".join(hardware) + ".")
    return items


def caveat_items(data: dict) -> list[str]:
    items = []
    for r in data["rows"]:
        if r["verdict"]["verdict"] == "inconclusive":
            items.append(f"{r['label']}: inconclusive — " + ("; ".join(r["verdict"]["reasons"]) or "the repeats "
                                                             "disagree"))
        for f in r["flags"]:
            if f["code"] != "on_cpu":
                items.append(f"{r['label']}: {f['text']}")
    for d in data["recommendation"].get("inconclusive") or []:
        if d.get("rule"):
            items.append(f"{d['label']}: {d['rule']}")
    items += data.get("notes") or []
    return items


# ---- the deck ---------------------------------------------------------------------------------------------------
def _chart_pngs(data: dict) -> list:
    try:
        from .charts import report_charts
    except ImportError:
        return []
    return [c for c in report_charts(data, svg=False, png=True, only=("cdf", "pareto")) if c.png]


def build(data: dict, *, charts: bool = True, author: str = "") -> Presentation:
    prs = Presentation()
    prs.slide_width, prs.slide_height = SLIDE_W, SLIDE_H
    page = _table(data, set())

    # 1. question and SLO
    slide = _slide(prs, _scope_title(data))
    rows = data["rows"]
    question = (f"Which of {len(rows)} variant{'s' if len(rows) != 1 else ''} meets the SLO at the lowest cost?"
                if rows else "Nothing to compare yet.")
    top = BODY_TOP
    box = _text(slide, MARGIN, top, BODY_W, [question], 24, bold=True)
    top += box.height + Inches(0.2)
    box = _text(slide, MARGIN, top, BODY_W, [f"SLO: {slo_text(data)}"], BODY_PT)
    top += box.height + Inches(0.2)
    names = ", ".join(r["label"] for r in rows)
    if names and top + height_of([f"Variants: {names}"], BODY_W, SMALL_PT) <= BODY_BOTTOM - Inches(0.6):
        box = _text(slide, MARGIN, top, BODY_W, [f"Variants: {names}"], SMALL_PT, color=MUTED)
    _text(slide, MARGIN, BODY_BOTTOM - Inches(0.45), BODY_W,
          [(f"{author} · " if author else "") + f"Exported {datetime.date.today():%Y-%m-%d} · every figure from "
           "the comparison page"], MIN_PT,
          color=MUTED)

    # 2. answer and recommendation
    slide = _slide(prs, "Answer")
    lines = _answer_lines(data, page)
    pt = BODY_PT
    while pt > SMALL_PT and BODY_TOP + height_of(lines, BODY_W, pt, 10) > BODY_BOTTOM:
        pt -= 2
    if BODY_TOP + height_of(lines, BODY_W, pt, 10) > BODY_BOTTOM:
        lines = lines[:1]
    _text(slide, MARGIN, BODY_TOP, BODY_W, lines, pt, space_pt=10)

    # 3. the comparison table
    if rows:
        _table_slides(prs, data, page)

    # 4. the two key charts
    pngs = _chart_pngs(data) if charts else []
    if pngs:
        slide = _slide(prs, "Latency and cost")
        gap = Inches(0.3)
        width = int((BODY_W - gap * (len(pngs) - 1)) / len(pngs))
        for i, chart in enumerate(pngs):
            left = MARGIN + i * (width + gap)
            box = _text(slide, left, BODY_TOP, width, [chart.title], BODY_PT, bold=True)
            pic_top = BODY_TOP + box.height
            pic = slide.shapes.add_picture(io.BytesIO(chart.png), Emu(left), Emu(pic_top), width=Emu(width))
            room = BODY_BOTTOM - pic_top - height_of(["x"], width, MIN_PT)
            if pic.height > room:  # a tall chart: fit its height, keep its aspect, centre it in its column
                w = int(pic.width * room / pic.height)
                pic.width, pic.height = Emu(w), Emu(int(room))
                pic.left = Emu(left + (width - w) // 2)
            cap_top = pic_top + pic.height + Inches(0.05)
            caption = [chart.caption]
            if cap_top + height_of(caption, width, MIN_PT) > BODY_BOTTOM:
                caption = [chart.caption.split(". ")[0].rstrip(".") + "."]
            if cap_top + height_of(caption, width, MIN_PT) <= BODY_BOTTOM:
                _text(slide, left, cap_top, width, caption, MIN_PT, color=MUTED)

    # 5. method and caveats
    caveats = caveat_items(data) or ["None: every variant decided, every repeat succeeded."]
    _columns_slides(prs, "Method and caveats", [("Method", method_items(data)), ("Caveats", caveats)])
    return prs


def render_pptx(data: dict, *, author=None, **_options) -> bytes:
    """The deck as bytes (a renderer of `reports.RENDERERS`)."""
    from .html import author_name

    out = io.BytesIO()
    build(data, author=author_name(author) if author is not None else "").save(out)
    return out.getvalue()


def shapes_inside(prs) -> list[str]:
    """Shapes that stick out of their slide (for tests and checks): empty when every one is inside."""
    bad = []
    for n, slide in enumerate(prs.slides, start=1):
        for s in slide.shapes:
            if s.left < 0 or s.top < 0 or s.left + s.width > prs.slide_width or s.top + s.height > prs.slide_height:
                bad.append(f"slide {n}: {s.shape_type} {s.name} at ({s.left}, {s.top}) size ({s.width}, {s.height}) "
                           f"on a {prs.slide_width} x {prs.slide_height} slide")
    return bad


def smallest_font_pt(prs) -> float:
    sizes = []
    for slide in prs.slides:
        for s in slide.shapes:
            frames = [s.text_frame] if s.has_text_frame else []
            if s.has_table:
                frames += [c.text_frame for row in s.table.rows for c in row.cells]
            for tf in frames:
                for p in tf.paragraphs:
                    for r in p.runs:
                        sizes.append(r.font.size.pt if r.font.size is not None else math.inf)
    return min(sizes) if sizes else math.inf
