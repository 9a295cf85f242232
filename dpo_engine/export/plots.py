"""Line charts as PNG files for the model card, drawn with Pillow (the engine never imports Qt,
so the Train page's pyqtgraph plots cannot be reused here).

    line_chart(path, title, "step", "loss", [Series("train", points, BLUE), ...])

One chart: a title, the plot frame with "nice" ticks (1, 2, 2.5, 5 x 10^k) and grid lines, the
axis labels, the series as lines (or dots for a sparse series such as the held-out evals) and a
legend. Non-finite values are left out; an empty chart says so instead of drawing axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = (800, 450)  # pixels: a readable width on the hub's card page, 16:9
MARGIN = (78, 62, 24, 56)  # left (tick labels + axis label), top (title + legend), right, bottom (ticks + label)
BLUE, ORANGE, PALE_BLUE = (31, 119, 180), (255, 127, 14), (174, 199, 232)  # the Train page's colours
INK, GRID, WHITE = (40, 40, 40), (225, 225, 225), (255, 255, 255)
FONT_PX, TITLE_PX = 14, 17


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[tuple[float, float], ...]  # (x, y), x increasing
    color: tuple[int, int, int]
    dots: bool = False  # markers at each point (a sparse series: a line between evals says little)
    width: int = 2


def nice_ticks(lo: float, hi: float, count: int = 5, min_step: float = 0.0) -> list[float]:
    """About `count` round values covering [lo, hi]: steps of 1, 2, 2.5 or 5 times a power of ten,
    at least `min_step` apart (1 for optimizer steps, which are whole numbers)."""
    span = hi - lo if hi > lo else (abs(hi) or 1.0)
    raw = max(span / count, min_step)
    power = 10 ** math.floor(math.log10(raw))
    steps = [m * power for m in (1, 2, 2.5, 5, 10)]
    step = next(t for t in steps if t >= raw * 0.999 and (not min_step or t == int(t)))
    first = math.floor(lo / step + 1e-9) * step
    ticks, k = [], 0
    while True:
        t = first + k * step
        ticks.append(round(t, 12))
        if t >= hi - step * 1e-9:
            return ticks
        k += 1


def tick_label(value: float) -> str:
    return f"{value:.4g}" if value else "0"


def _font(px: int):
    try:
        return ImageFont.load_default(size=px)  # Pillow's built-in FreeType font (Pillow >= 10.1)
    except (TypeError, ValueError, OSError):  # an older Pillow or one built without FreeType: bitmap font
        return ImageFont.load_default()


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving average over `window` points (shorter at the ends): the trend of a noisy
    per-step curve, without the lag an exponential average adds."""
    half = max(window, 1) // 2
    out = []
    for i in range(len(values)):
        part = values[max(0, i - half): i + half + 1]
        out.append(sum(part) / len(part))
    return out


def _finite(series: list[Series]) -> list[Series]:
    kept = [Series(s.label, tuple((x, y) for x, y in s.points if math.isfinite(x) and math.isfinite(y)),
                   s.color, s.dots, s.width) for s in series]
    return [s for s in kept if s.points]


def _ranges(series: list[Series], y_range: tuple[float, float] | None) -> tuple[list[float], list[float]]:
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = min(0.0, x_lo), x_lo + 1
    if y_range is not None:
        y_lo, y_hi = y_range
    else:
        y_lo, y_hi = min(ys), max(ys)
        pad = (y_hi - y_lo) * 0.05 or abs(y_hi) * 0.05 or 0.5
        y_lo, y_hi = (y_lo - pad if y_lo - pad >= 0 or y_lo < 0 else 0.0), y_hi + pad  # a loss stays >= 0
    return nice_ticks(x_lo, x_hi, min_step=1.0), nice_ticks(y_lo, y_hi)


def line_chart(path: str | Path, title: str, x_label: str, y_label: str, series: list[Series],
               y_range: tuple[float, float] | None = None, size: tuple[int, int] = SIZE) -> None:
    """Draw `series` as one line chart and save it as a PNG at `path`."""
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    font, title_font = _font(FONT_PX), _font(TITLE_PX)
    width, height = size
    left, top, right, bottom = MARGIN[0], MARGIN[1], width - MARGIN[2], height - MARGIN[3]
    draw.text((width / 2, 12), title, fill=INK, font=title_font, anchor="mt")
    series = _finite(series)
    if not series:
        draw.text((width / 2, height / 2), "nothing was logged", fill=INK, font=font, anchor="mm")
        image.save(path, format="PNG")
        return
    x_ticks, y_ticks = _ranges(series, y_range)
    (x0, x1), (y0, y1) = (x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1])

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)

    for t in x_ticks:
        x, _ = px(t, y0)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.text((x, bottom + 5), tick_label(t), fill=INK, font=font, anchor="ma")
    for t in y_ticks:
        _, y = px(x0, t)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.text((left - 6, y), tick_label(t), fill=INK, font=font, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=INK)
    draw.text(((left + right) / 2, height - 6), x_label, fill=INK, font=font, anchor="md")
    _vertical_text(image, y_label, font, (14, (top + bottom) / 2))
    for s in series:
        points = [px(x, y) for x, y in s.points]
        if len(points) > 1 and not s.dots:
            draw.line(points, fill=s.color, width=s.width, joint="curve")
        if s.dots or len(points) == 1:
            for x, y in points:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=s.color, outline=WHITE)
    _legend(draw, series, font, (right, top - 22))
    image.save(path, format="PNG")


def _vertical_text(image: Image.Image, text: str, font, center: tuple[float, float]) -> None:
    box = font.getbbox(text)
    label = Image.new("RGB", (box[2] - box[0] + 4, box[3] - box[1] + 4), WHITE)
    ImageDraw.Draw(label).text((2 - box[0], 2 - box[1]), text, fill=INK, font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (int(center[0] - label.width / 2), int(center[1] - label.height / 2)))


def _legend(draw: ImageDraw.ImageDraw, series: list[Series], font, top_right: tuple[float, float]) -> None:
    """One row of (swatch, label) entries above the plot, ending at its right edge."""
    entries = [s for s in series if s.label]
    x = top_right[0] - sum(36 + draw.textlength(s.label, font=font) for s in entries) + 6
    y = top_right[1] + 8
    for s in entries:
        if s.dots:
            draw.ellipse([x + 8, y - 4, x + 16, y + 4], fill=s.color)
        else:
            draw.line([(x, y), (x + 24, y)], fill=s.color, width=max(2, s.width))
        draw.text((x + 30, y), s.label, fill=INK, font=font, anchor="lm")
        x += 36 + draw.textlength(s.label, font=font)
