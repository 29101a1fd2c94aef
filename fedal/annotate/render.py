"""Drawing one point of a site's data for the labeling page, on the site: a 1-D signal as an
inline SVG (no JavaScript plotting library, nothing fetched from the internet), an image as PNG."""

from __future__ import annotations

import io
from html import escape

import numpy as np

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def point_kind(x: np.ndarray) -> str:
    """'signal' or 'image' for a site's input array x of shape (N, ...)."""
    s = x.shape[1:]
    if len(s) == 1:
        return "signal"  # (N, L)
    if len(s) == 2:
        # (N, C, L) with a few channels and a long axis is a multichannel signal; else (N, H, W)
        return "signal" if s[0] <= 4 and s[1] >= 16 * s[0] else "image"
    if len(s) == 3 and (s[2] in (1, 3, 4) or s[0] in (1, 3)):
        return "image"
    raise ValueError(f"inputs of shape {tuple(s)} are neither a signal (L,) / (C, L) nor an image "
                     "(H, W) / (H, W, C) / (C, H, W)")


def signal_svg(v: np.ndarray, width: int = 720, height: int = 260, pad: int = 24, axes: bool = True) -> str:
    """A line plot of a (L,) or (C, L) signal as an SVG element (one polyline per channel);
    ``axes=False``: the lines alone (a thumbnail)."""
    a = np.asarray(v, dtype=np.float64)
    a = a[None, :] if a.ndim == 1 else a.reshape(a.shape[0], -1)
    n = a.shape[1]
    lo, hi = float(np.min(a)), float(np.max(a))
    if hi - lo < 1e-12:
        lo, hi = lo - 1.0, hi + 1.0
    xs = pad + (width - 2 * pad) * (np.arange(n) / max(n - 1, 1))

    def y_of(val):
        return pad + (height - 2 * pad) * (1.0 - (val - lo) / (hi - lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="signal" role="img" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" aria-label="signal with {n} samples">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
             f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" '
             'stroke="#ccc"/>']
    if lo < 0 < hi:  # the zero line
        parts.append(f'<line x1="{pad}" x2="{width - pad}" y1="{y_of(0):.1f}" y2="{y_of(0):.1f}" '
                     'stroke="#999" stroke-dasharray="4 3"/>')
    for c, row in enumerate(a):
        pts = " ".join(f"{x:.1f},{y_of(val):.1f}" for x, val in zip(xs, row))
        color = COLORS[c % len(COLORS)]
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
        if n <= 80 and axes:
            parts += [f'<circle cx="{x:.1f}" cy="{y_of(val):.1f}" r="2.5" fill="{color}"/>' for x, val in zip(xs, row)]
    if axes:
        parts.append(f'<text x="{pad}" y="{pad - 8}" font-size="12" fill="#555">{escape(f"{hi:.3g}")}</text>')
        parts.append(f'<text x="{pad}" y="{height - 6}" font-size="12" fill="#555">{escape(f"{lo:.3g}")}'
                     f' · {n} samples{f" · {a.shape[0]} channels" if a.shape[0] > 1 else ""}</text>')
    parts.append("</svg>")
    return "".join(parts)


def image_png(v: np.ndarray, min_side: int = 280, dark_ink: bool = False) -> bytes:
    """A (H, W), (H, W, C) or (C, H, W) image as PNG bytes, enlarged (nearest neighbour) so that
    its shorter side is at least ``min_side`` pixels. ``dark_ink``: high values drawn dark (ink on
    paper, as scikit-learn's digits count ink)."""
    from PIL import Image

    a = np.asarray(v)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):
        a = np.transpose(a, (1, 2, 0))  # CHW -> HWC
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0.0 and hi <= 1.0:
            a = a * 255.0
        elif hi - lo > 1e-12:
            a = (a - lo) / (hi - lo) * 255.0
        else:
            a = np.zeros_like(a)
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if dark_ink:
        a = 255 - a
    img = Image.fromarray(a)
    h, w = a.shape[:2]
    scale = max(1, -(-min_side // max(1, min(h, w))))
    if scale > 1:
        img = img.resize((w * scale, h * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
