"""What one site's labeling page serves (fedal/annotate/app.py): the site's data and pool store,
how its points are drawn and its classes named (fedal/data/info.py), the token; and the page for a
query or for an empty pool (fedal/annotate/pages.py) with the point drawn (render.py)."""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np

from fedal.annotate import pages
from fedal.annotate.annotators import AnnotationDesk, RunState, run_state
from fedal.annotate.render import signal_svg
from fedal.data.info import SiteDisplay, site_display
from fedal.store import DEFAULT_LEASE_S, PoolStore, Progress, Query

MIN_TOKEN_CHARS = 16


def shortcut_keys(num_classes: int) -> list[str | None]:
    """The key of each class: digits 0-9 for the first ten, then the letters a-z; none beyond 36."""
    keys = [str(k) for k in range(10)] + [chr(ord("a") + k) for k in range(26)]
    return [keys[c] if c < len(keys) else None for c in range(num_classes)]


class LabelingSite:
    """What the page serves: one site's data, its pool store, how its points are drawn and its
    classes named (``display``, fedal/data/info.py), the token.

    ``resolve``: builds the display for the run's dataset; called once, when the site's ClientApp
    has recorded the dataset in the store (a page started before the run's first message)."""

    def __init__(self, store: PoolStore, x: np.ndarray, class_names: list[str], token: str, *,
                 site_name: str = "", annotator: str = "page", lease_s: float = DEFAULT_LEASE_S,
                 display: SiteDisplay | None = None, resolve: Callable[[str], SiteDisplay] | None = None) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the token must have at least {MIN_TOKEN_CHARS} characters")
        self.store, self.x, self.token = store, x, token
        self.display = display or site_display(x.shape[1:], site_names=class_names)
        self._resolve = resolve
        self.site_name, self.annotator, self.lease_s = site_name or store.identity["client_id"], annotator, lease_s

    @property
    def class_names(self) -> list[str]:
        return list(self.display.class_names)

    @property
    def kind(self) -> str:
        return self.display.kind

    @property
    def keys(self) -> list[str | None]:
        return shortcut_keys(len(self.display.class_names))

    def run(self) -> RunState:
        """The run's state as the store records it; the display follows the run's dataset once known."""
        state = run_state(self.store)
        if self._resolve is not None and state.dataset:
            resolve, self._resolve = self._resolve, None
            try:
                self.display = resolve(state.dataset)
            except Exception as e:  # the ClientApp accepted the data, so this is unexpected: say it, go on
                print(f"fedal-annotate: warning: cannot draw the points as dataset {state.dataset!r} does ({e}); "
                      "drawing them as stored", file=sys.stderr, flush=True)
        return state

    def desk(self, session: str) -> AnnotationDesk:
        return AnnotationDesk(self.store, self.session_annotator(session), num_classes=len(self.class_names),
                              lease_s=self.lease_s)

    def session_annotator(self, session: str) -> str:
        return f"{self.annotator}/{session[:12]}"

    def class_label(self, c: int | None) -> str:
        if c is None:
            return "-"
        return self.class_names[c] if 0 <= c < len(self.class_names) else str(c)

    def point(self, index: int) -> np.ndarray:
        return self.display.point(self.x, index)

    def render(self, q: Query | None, p: Progress, empty: str | None, last: Query | None, note: str = "") -> str:
        """The page for query ``q``, or with none the page for the ``empty`` state
        (``pages.empty_state``); ``last``: this person's last label, confirmed with its Undo."""
        done = "" if last is None else pages.last_label(last, self.class_label(last.label),
                                                        self.picture(last, thumb=True))
        if q is None:
            return pages.empty_page(self.site_name, p, empty, note=note, last=done)
        return pages.query_page(self.site_name, p, q, shown=self.picture(q), kind=self.kind,
                                class_names=self.class_names, keys=self.keys, note=note, last=done,
                                guess_name=None if q.guess is None else self.class_label(q.guess))

    def picture(self, q: Query, *, thumb: bool = False) -> str:
        """The point of query ``q`` as HTML: a signal's SVG, or an <img> of the PNG route."""
        if self.kind == "signal":
            return signal_svg(self.point(q.index), **({"width": 240, "height": 80, "pad": 6, "axes": False}
                                                      if thumb else {}))
        if thumb:
            return f'<img class="thumb" src="/point/{q.id}.png" alt="">'
        return f'<img id="point-image" src="/point/{q.id}.png" alt="the point to label">'
