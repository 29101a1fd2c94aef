"""A site's error as the server sees it: one line that names the site (its client id) and says
whether the error is *final*.

Flower turns an exception raised by a ClientApp into an error reply whose reason is
``"<class 'module.Type'>:<'message'>"`` (flwr/supernode/runtime/run_clientapp.py; the
simulation engine wraps it once more in a ``ClientAppException``), and the reply's metadata
carries the node id only, not fedal's client id. So the ClientApp (``fedal.client_app``) raises
every error as a ``SiteError`` whose message starts with a prefix the server parses back
(``parse``), wherever Flower puts it in the reason:

    [fedal-site clinic-3 final] data-path /srv/site/images does not exist; ...

- the client id is the node config's ``client-id`` (or the simulated client's partition id),
  known even when the site's data cannot be loaded; ``?`` when the node config names none or an
  invalid one (the server then names the node id);
- ``final``: a configuration or data error at the site (a bad node config, data that do not fit
  the run's dataset, a foreign or damaged pool store, no labels for an acquisition, a persistent
  worker that cannot start): asking again gives the same answer, so the server skips the site
  at once (or stops, when the federation cannot reach ``min-clients`` without it) instead of
  retrying or waiting out ``wait-timeout``; ``retry``: anything else (the step is resent).

This module imports nothing of Flower or torch: the ClientApp process of a persistent worker
(``fedal.deploy.node_worker``) and the server both use it.
"""

from __future__ import annotations

import re

PREFIX = "fedal-site"
_PREFIX = re.compile(r"\[" + PREFIX + r" (?P<cid>[A-Za-z0-9][A-Za-z0-9._-]{0,63}|\?) (?P<kind>final|retry)\] "
                     r"(?P<msg>[^\n]*)")
_FLOWER = re.compile(r"^<class '(?:[\w.]+\.)?(?P<type>\w+)'>:<'(?P<msg>.*)'>$", re.S)
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SiteError(RuntimeError):
    """An error at a site, raised by the ClientApp with the site's client id in a prefix the
    server parses (module docstring)."""

    def __init__(self, client_id: str | None, message: str, final: bool):
        cid = str(client_id) if client_id is not None and _CLIENT_ID.match(str(client_id)) else "?"
        self.client_id = None if cid == "?" else cid
        self.final = bool(final)
        self.detail = one_line(message)
        super().__init__(f"[{PREFIX} {cid} {'final' if final else 'retry'}] {self.detail}")


def one_line(message: str) -> str:
    """``message`` on one line (a reason is printed in one log line and one row entry)."""
    return " ".join(str(message).split())


def is_final(e: BaseException) -> bool:
    """Whether ``e`` is a configuration or data error at the site (asking again is pointless)."""
    from fedal.client import LabelsUnavailableError
    from fedal.client_data import NodeConfigError
    from fedal.data.site import SiteDataError
    from fedal.errors import ConfigError
    from fedal.store import StoreError

    return isinstance(e, (NodeConfigError, SiteDataError, StoreError, LabelsUnavailableError, ConfigError))


def describe(e: BaseException) -> str:
    """What the operator reads of an exception: a final error's own message (it names the file,
    the key or the value), else its type and message."""
    return str(e) if is_final(e) else f"{type(e).__name__}: {e}"


def node_client_id(node_config) -> str | None:
    """The client id a SuperNode's node config gives it (``client-id``, else a simulated
    client's ``partition-id``), read without loading its data."""
    cid = str(node_config.get("client-id", "") or "").strip()
    if cid:
        return cid
    pid = node_config.get("partition-id")
    return None if pid in (None, "") else str(pid)


def parse(reason: str) -> tuple[str | None, bool, str] | None:
    """(client id or None, final, message) of an error reply's reason carrying a ``SiteError``;
    None for any other reason."""
    m = _PREFIX.search(reason or "")
    if m is None:
        return None
    msg = m.group("msg")
    if msg.endswith("'>"):  # Flower's wrapper closes on the same line
        msg = msg[:-2]
    return (None if m.group("cid") == "?" else m.group("cid")), m.group("kind") == "final", msg.strip()


def clean(reason: str) -> str:
    """An error reply's reason as one readable line: a ``SiteError``'s message without its prefix,
    another exception as ``Type: message`` without Flower's ``<class '…'>:<'…'>`` wrapper, any
    other text as it is."""
    p = parse(reason)
    if p is not None:
        return p[2]
    m = _FLOWER.match((reason or "").strip())
    if m is not None:
        return one_line(f"{m.group('type')}: {m.group('msg')}")
    return one_line(reason or "")
