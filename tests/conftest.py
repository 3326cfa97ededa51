"""Fixtures for every suite: a real redis-server per test (see redis_server.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ("redis_server",)
