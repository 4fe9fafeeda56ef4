"""SVG charts: well-formed, escaped, spikes survive the reduction, episodes shaded."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from vitals.charts import svg_chart
from vitals.summaries import Episode

NS = "{http://www.w3.org/2000/svg}"
T0 = 1_767_225_600_000


def _points(svg: str) -> list[tuple[float, float]]:
    line = ET.fromstring(svg).find(f"{NS}polyline")  # noqa: S314 (our own output)
    assert line is not None
    pairs = (p.split(",") for p in line.attrib["points"].split())
    return [(float(x), float(y)) for x, y in pairs]


def test_a_day_of_1hz_heart_rate_is_reduced_but_keeps_its_spike() -> None:
    t = T0 + np.arange(86_400, dtype=np.int64) * 1000
    v = np.full(len(t), 60.0)
    v[50_000] = 180.0
    svg = svg_chart("Heart rate", "/min", t, v, T0, T0 + 86_400_000)
    points = _points(svg)
    assert len(points) <= 2 * 428
    assert min(y for _, y in points) == pytest.approx(20.0)  # the spike reaches the top


def test_text_is_escaped_and_episodes_are_shaded() -> None:
    ep = Episode("r", "below <92> & falling", T0, T0 + 60_000, 88.0)
    t = T0 + np.arange(3, dtype=np.int64) * 60_000
    svg = svg_chart("SpO2 <&>", "%", t, np.array([97.0, 88.0, 96.0]), T0, T0 + 3_600_000,
                    [ep])
    root = ET.fromstring(svg)  # noqa: S314 (our own output; well-formed despite markup)
    assert root.find(f"{NS}title").text == "SpO2 <&> (%)"  # type: ignore[union-attr]
    shaded = [r for r in root.iter(f"{NS}rect") if r.attrib.get("fill") == "#f4a3a3"]
    assert len(shaded) == 1


def test_an_empty_period_says_so() -> None:
    svg = svg_chart("Weight", "kg", np.array([], np.int64), np.array([]), T0, T0 + 1)
    assert "no data in this period" in svg
    with pytest.raises(ValueError):
        svg_chart("Weight", "kg", np.array([], np.int64), np.array([]), T0, T0)
