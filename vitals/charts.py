"""A small SVG chart per metric, for the reader who would rather look than read.

Hand-written SVG (no plotting library): a line of the values over the period, the period's
min and max labelled, flagged episodes shaded. Long series are reduced to one point per
pixel column (min and max kept, so a spike stays visible).
"""

from __future__ import annotations

from collections.abc import Sequence
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt

from vitals.summaries import Episode

WIDTH, HEIGHT = 480, 160
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 8, 20, 18


def svg_chart(title: str, unit: str, t_ms: npt.NDArray[np.int64],
              value: npt.NDArray[np.float64], start_ms: int, end_ms: int,
              episodes: Sequence[Episode] = ()) -> str:
    """The chart as an SVG document (UTF-8 text)."""
    if end_ms <= start_ms:
        raise ValueError("the period must not be empty")
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f'<title>{escape(title)} ({escape(unit)})</title>',
             f'<text x="{PAD_LEFT}" y="13" font-family="sans-serif" font-size="12">'
             f'{escape(title)} ({escape(unit)})</text>',
             f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{plot_w}" height="{plot_h}" '
             'fill="none" stroke="#ccc"/>']

    def x_of(t: npt.NDArray[np.int64] | int) -> npt.NDArray[np.float64]:
        return PAD_LEFT + (np.asarray(t, np.float64) - start_ms) / (end_ms - start_ms) * plot_w

    for ep in episodes:
        x0, x1 = float(x_of(ep.start_ms)), float(x_of(max(ep.end_ms, ep.start_ms)))
        parts.append(f'<rect x="{x0:.1f}" y="{PAD_TOP}" width="{max(x1 - x0, 2.0):.1f}" '
                     f'height="{plot_h}" fill="#f4a3a3" opacity="0.5">'
                     f'<title>{escape(ep.description)}</title></rect>')
    if len(t_ms):
        lo, hi = float(value.min()), float(value.max())
        span = hi - lo or 1.0
        t_r, v_r = _per_column(t_ms, value, start_ms, end_ms, plot_w)
        xs = x_of(t_r)
        ys = PAD_TOP + plot_h - (v_r - lo) / span * plot_h
        points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="#1f5fa8" '
                     'stroke-width="1.2"/>')
        for label, y in ((hi, PAD_TOP + 4), (lo, PAD_TOP + plot_h)):
            parts.append(f'<text x="{PAD_LEFT - 4}" y="{y}" text-anchor="end" '
                         f'font-family="sans-serif" font-size="10">{label:g}</text>')
    else:
        parts.append(f'<text x="{PAD_LEFT + plot_w / 2}" y="{PAD_TOP + plot_h / 2}" '
                     'text-anchor="middle" font-family="sans-serif" font-size="11">'
                     'no data in this period</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _per_column(t_ms: npt.NDArray[np.int64], value: npt.NDArray[np.float64], start_ms: int,
                end_ms: int, columns: int
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """At most two points (min then max, in time order) per pixel column."""
    if len(t_ms) <= 2 * columns:
        return t_ms, value
    col = ((t_ms - start_ms) * columns // (end_ms - start_ms)).clip(0, columns - 1)
    keep = np.zeros(len(t_ms), bool)
    _, first = np.unique(col, return_index=True)
    for a, b in zip(first, np.r_[first[1:], len(col)], strict=True):
        seg = value[a:b]
        keep[a + int(np.argmin(seg))] = True
        keep[a + int(np.argmax(seg))] = True
    return t_ms[keep], value[keep]
