"""Debug channels: `logging` loggers named `avalon.<channel>`, switched on by the environment.

`AVALON_LOG=fusion,cache` turns on those channels at DEBUG level (`AVALON_LOG=all` turns on
every channel); output goes to stderr. Code calls `get_logger("fusion").debug(...)`.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys

_configured = False


def _configure() -> None:
    global _configured
    _configured = True
    spec = os.environ.get("AVALON_LOG", "").strip()
    if not spec:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    root = logging.getLogger("avalon")
    root.addHandler(handler)
    root.propagate = False
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if "all" in names or "1" in names:
        root.setLevel(logging.DEBUG)
    else:
        for n in names:
            logging.getLogger(f"avalon.{n}").setLevel(logging.DEBUG)
        atexit.register(_unused, names)


_asked: set[str] = set()


def _unused(names: list[str]) -> None:
    """At exit, name the AVALON_LOG channels no code asked for (a typo, `fuson`, would otherwise
    print nothing and say nothing)."""
    idle = [n for n in names if n not in _asked and not any(a.startswith(n + ".") for a in _asked)]
    if idle:
        sys.stderr.write(f"avalon: AVALON_LOG names {', '.join(idle)}, but no channel of that name was used "
                         f"in this run (used: {', '.join(sorted(_asked)) or 'none'}); a typo?\n")


def get_logger(channel: str) -> logging.Logger:
    if not _configured:
        _configure()
    _asked.add(channel)
    return logging.getLogger(f"avalon.{channel}")
