"""Small bar charts laid out on the server and drawn as inline SVG (no JS chart bundle)."""

from __future__ import annotations

from typing import Any

WIDTH, HEIGHT = 480, 120
LEFT, BOTTOM, TOP = 36, 18, 6


def stacked_bars(buckets: list[dict[str, Any]], keys: list[str], unit: str = "") -> dict:
    """Lay out one stacked bar per bucket ({"label", "values": {key: number}}) in SVG units."""
    # Returns the rectangles (x, y, w, h, cls, title), the x-axis ticks and the
    # largest total, for the `chart` macro in templates/_macros.html to draw.
    totals = [sum(b["values"].get(k, 0) or 0 for k in keys) for b in buckets]
    top = max(totals, default=0) or 1
    plot_w = WIDTH - LEFT - 4
    plot_h = HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, len(buckets))
    bar_w = max(1.0, step * 0.75)
    rects, ticks = [], []
    for i, bucket in enumerate(buckets):
        x = LEFT + i * step + (step - bar_w) / 2
        y = float(TOP + plot_h)
        parts = []
        for key in keys:
            value = bucket["values"].get(key, 0) or 0
            if value <= 0:
                continue
            h = max(1.0, value / top * plot_h)
            y -= h
            rects.append(
                {"x": round(x, 1), "y": round(y, 1), "w": round(bar_w, 1), "h": round(h, 1),
                 "cls": f"bar-{key}", "title": f"{bucket['label']}: {fmt(value, unit)} {key}"}
            )  # fmt: skip
            parts.append(f"{fmt(value, unit)} {key}")
        if i % 6 == 0:
            ticks.append({"x": round(x + bar_w / 2, 1), "label": bucket["label"]})
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "top": TOP,
        "base": TOP + plot_h,
        "rects": rects,
        "ticks": ticks,
        "max_label": fmt(max(totals, default=0), unit),
        "empty": not any(totals),
    }


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        from app.dashboard.common import span

        return span(value)
    return f"{value:g}"
