"""Debug channels: `logging` loggers named `avalon.<channel>`, switched on by the environment.

`AVALON_LOG=fusion,cache` turns on those channels at DEBUG level (`AVALON_LOG=all` turns on
every channel); output goes to stderr. Code calls `get_logger("fusion").debug(...)`.
"""
from __future__ import annotations

import logging
import os

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


def get_logger(channel: str) -> logging.Logger:
    if not _configured:
        _configure()
    return logging.getLogger(f"avalon.{channel}")
