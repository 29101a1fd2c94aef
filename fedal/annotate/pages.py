"""The labeling page's HTML (fedal/annotate/app.py serves it), in plain words for the person who
labels: what to do, how many labels are wanted now, what they just did (with an Undo that names
it), and, when there is nothing to label, whether more may come later or the run has finished.
The technical details of a point (query, point index, strategy, AL round) stay on the page, in a
small "details" line, for the operator.

Which empty page a person sees (``empty_state``), from the site's store (fedal/store/) and the
run's state that the ClientApp records in it (fedal/annotate/annotators.py, ``mark_run``):

- ``finished``: the run sent its last message; nothing more will come in this run.
- ``not-asked``: no grant yet (the store has no budget): nothing asked of this site so far.
- ``between-grants``: everything granted so far is labeled; the next grant may come later.
- ``preparing``: labels are still wanted but no point is ready (the pool is being refilled).
- ``nothing-left``: labels are still wanted but every point of the site is labeled or skipped.
"""

from __future__ import annotations

from html import escape

from fedal.store import Progress, Query

REFRESH_S = 5  # nothing to label: look again this often

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#24324a;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
.bar{background:#3b4d6b;border-radius:4px;width:220px;height:14px;overflow:hidden;display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%;background:#6fcf97}
main{padding:16px 20px;max-width:1000px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 16px;margin-bottom:14px}
.ask{font-size:18px;margin:0 0 10px}
.guess{font-size:16px;margin:8px 0}
.guess b{font-size:18px}
.classes{display:flex;flex-wrap:wrap;gap:8px;margin:10px 0}
.classes button{font-size:16px;padding:10px 14px;border:1px solid #8fa3c0;background:#eef3fb;border-radius:6px;cursor:pointer;min-width:64px}
.classes button.guessed{border-color:#24324a;border-width:2px}
.classes button:hover{background:#dbe7f8}
kbd{font-family:ui-monospace,monospace;background:#fff;border:1px solid #aaa;border-bottom-width:2px;border-radius:3px;padding:0 4px;font-size:12px;color:#333}
.actions{display:flex;gap:10px;margin-top:6px;align-items:center}
.actions button{padding:8px 14px;border-radius:6px;border:1px solid #aaa;background:#fafafa;cursor:pointer}
.note{padding:8px 12px;border-radius:6px;background:#fff6d6;border:1px solid #e6d38a;margin-bottom:12px}
.done{display:flex;gap:12px;align-items:center;flex-wrap:wrap;padding:8px 12px;border-radius:6px;background:#e9f7ef;border:1px solid #9fd3b3;margin-bottom:12px}
.done button{padding:6px 12px;border-radius:6px;border:1px solid #8a9;background:#fff;cursor:pointer}
.done img{height:40px;image-rendering:pixelated;border:1px solid #ccc}
.done svg{height:40px;width:auto;border:1px solid #ccc}
.point img{image-rendering:pixelated;border:1px solid #ccc;max-width:100%}
.details{color:#888;font-size:12px;margin-top:12px}
.help{color:#555;font-size:13px}
"""

_SCRIPT = """
(function(){
  var sent = false;
  function press(el){ if(!el || sent) return; sent = true; el.click(); }
  document.addEventListener('keydown', function(e){
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    var el = null;
    if (e.key === ' ') el = document.getElementById('skip');
    else if (e.key === 'Backspace') el = document.getElementById('undo');
    else if (e.key.length === 1) el = document.querySelector('button[data-key="' + e.key.toLowerCase() + '"]');
    if (el) { e.preventDefault(); press(el); }
  });
  document.querySelectorAll('form').forEach(function(f){
    f.addEventListener('submit', function(){ sent = true; });
  });
})();
"""


def page(title: str, body: str, *, refresh: int | None = None) -> str:
    head = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>{head}'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
            f"<body>{body}<script>{_SCRIPT}</script></body></html>")


def login_page(status: int) -> str:
    why = "This page needs the site's token." if status == 401 else "That token is not valid for this site."
    return page("Labeling: token needed",
                f'<main><div class="card"><h2>{escape(why)}</h2>'
                '<form method="post" action="/login"><label>Token <input type="password" name="token" '
                'autocomplete="current-password" autofocus></label> <button>Open</button></form>'
                '<p class="help">The person who runs labeling at your site has it: ask them for this '
                "page's token.</p></div></main>")


def empty_state(p: Progress, finished: bool) -> str:
    """Why there is nothing to label (module docstring); the caller tells ``preparing`` from
    ``nothing-left`` (``PoolStore.candidates``: a point may still be asked about)."""
    if finished:
        return "finished"
    if p.budget is None:
        return "not-asked"
    return "between-grants" if p.spent else "preparing"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def header(site_name: str, p: Progress, finished: bool) -> str:
    labeled = _count(p.labeled, "point labeled", "points labeled")
    if finished:
        status = f"{labeled} · labeling finished"
    elif p.budget is None:
        status = f"{labeled} · nothing asked yet"
    else:
        status = f"{labeled} · {max(0, p.remaining)} left now"
    bar = ""
    if p.budget:
        frac = min(1.0, p.labeled / p.budget)
        bar = (f'<span class="bar" title="{p.labeled} of the {p.budget} labels asked for so far">'
               f'<span style="width:{100 * frac:.1f}%"></span></span> ')
    return (f"<header><h1>Labeling · {escape(site_name)}</h1><div>{bar}<span id=\"progress\">{escape(status)}"
            f"</span></div><div id=\"mine\">you: {p.by_annotator or 0}</div></header>")


_EMPTY = {
    "not-asked": ("Nothing to label yet",
                  "This site has not been asked for labels yet. Points may come at any time: leave this page "
                  "open; it checks every {refresh} seconds."),
    "preparing": ("The next points are being prepared",
                  "{left} more labels are wanted. The computer is choosing which points to show you next; this "
                  "page checks every {refresh} seconds."),
    "nothing-left": ("Nothing left to label here. Thank you!",
                     "Every point at this site has been labeled or skipped. Leave this page open if you like; it "
                     "checks every {refresh} seconds."),
    "between-grants": ("All done for now. Thank you!",
                       "You have labeled everything asked for so far. More points may come later, once the model "
                       "has learned from these labels: leave this page open; it checks every {refresh} seconds."),
    "finished": ("This labeling run has finished",
                 "Thank you! {labeled} at this site ({mine} by you). Nothing more will be asked in this run; "
                 "you can close this page."),
}


def empty_page(site_name: str, p: Progress, state: str, *, note: str = "", last: str = "") -> str:
    """The page when there is nothing to label; ``last``: the confirmation of the last label, with
    its Undo (``last_label``), shown unless the run has finished."""
    title, text = _EMPTY[state]
    text = text.format(refresh=REFRESH_S, left=max(0, p.remaining or 0), mine=p.by_annotator or 0,
                       labeled=_count(p.labeled, "point was labeled", "points were labeled"))
    body = [header(site_name, p, state == "finished"), "<main>", _note(note), last if state != "finished" else "",
            f'<div class="card" id="empty" data-state="{state}"><h2>{escape(title)}</h2><p>{escape(text)}</p></div>',
            "</main>"]
    return page(f"Labeling · {site_name}", "".join(body), refresh=None if state == "finished" else REFRESH_S)


def _note(note: str) -> str:
    return f'<div class="note" id="note">{escape(note)}</div>' if note else ""


def last_label(q: Query | None, name: str, thumb: str) -> str:
    """"Labeled the last point as '7'", a small picture of it, and the Undo button naming what it
    undoes; the form carries the query, so that the page undoes only the label it named."""
    if q is None:
        return ""
    return (f'<div class="done" id="last"><span>&#10003; Your last label: <b>&lsquo;{escape(name)}&rsquo;</b>'
            f"</span>{thumb}"
            f'<form method="post" action="/undo"><input type="hidden" name="query_id" value="{q.id}">'
            f'<button id="undo" type="submit" title="Backspace">Undo &lsquo;{escape(name)}&rsquo; '
            f"<kbd>Backspace</kbd></button></form></div>")


def query_page(site_name: str, p: Progress, q: Query, *, shown: str, kind: str, class_names, keys,
               guess_name: str | None, note: str = "", last: str = "") -> str:
    """One point to label: the point (``shown``: its SVG or <img>), one button per class,
    Skip; the last label with its Undo above it; the details line below."""
    what = "picture" if kind == "image" else "signal"
    guess = ""
    if guess_name is not None:
        sure = "" if q.confidence is None else f" ({100 * q.confidence:.0f}% sure)"
        guess = (f'<div class="guess" id="guess">The model&rsquo;s guess: <b>{escape(guess_name)}</b>{escape(sure)}'
                 " &mdash; check it yourself</div>")
    buttons = []
    for c, name in enumerate(class_names):
        key = keys[c]
        attrs = f' data-key="{key}" title="key {key}"' if key else ""
        cls = ' class="guessed"' if q.guess == c else ""
        kbd = f" <kbd>{escape(key)}</kbd>" if key else ""
        buttons.append(f'<button type="submit" name="label" value="{c}" id="class-{c}"{cls}{attrs}>'
                       f"{escape(name)}{kbd}</button>")
    body = [
        header(site_name, p, False), "<main>", _note(note), last,
        f'<div class="card"><p class="ask" id="ask">What does this {what} show? Click the right answer, or press '
        f"its key.</p>"
        f'<div class="point">{shown}</div>{guess}'
        f'<form method="post" action="/label" id="label-form"><input type="hidden" name="query_id" value="{q.id}">'
        f'<div class="classes">{"".join(buttons)}</div></form>'
        f'<div class="actions"><form method="post" action="/skip"><input type="hidden" name="query_id" '
        f'value="{q.id}"><button id="skip" type="submit" title="Space">Skip: I can&rsquo;t tell <kbd>Space</kbd>'
        "</button></form></div>"
        # the technical details, for the operator (a durable store's queries carry the AL round of
        # the message whose model chose them, fedal/async_labeling.py, PeopleSite)
        f'<div class="details" id="query-meta" data-query-id="{q.id}" data-index="{q.index}">details: query '
        f"{q.id} · point {q.index} · chosen by {escape(q.strategy)} in AL round {q.model_version}</div></div>",
        '<p class="help">Keys: the key on each answer labels the point; <kbd>Space</kbd> skips it; '
        "<kbd>Backspace</kbd> undoes your last label (the point comes back).</p></main>"]
    return page(f"Labeling · {site_name}", "".join(body))
