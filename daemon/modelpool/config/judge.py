"""The compiled schema's verdict, and the loop a gate child runs to give it.

Kept to the standard library and jsonschema-rs: this module is what a gate
child imports (see :mod:`modelpool.config.gate`), and each import here delays
every reload.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from functools import cache
from typing import IO, Any

FRAME = struct.Struct(">Q")
"""The length of the pickled document that follows it."""

VALID, INVALID = b"1", b"0"


def schema_text() -> str:
    """The schema as shipped (also `schemas/pools.schema.json` in the repository)."""
    # Beside this module, not via importlib.resources: the child starts 20 ms sooner.
    with open(os.path.join(os.path.dirname(__file__), "pools.schema.json"), encoding="utf-8") as f:
        return f.read()


def judge(data: Any) -> bool:
    """The verdict of the compiled schema, in this process."""
    try:
        return bool(_compiled().is_valid(data))
    except ValueError:
        # A value JSON has no type for (a YAML date such as an unquoted
        # `api_version: 2023-06-01`, `!!binary`): jsonschema says where it is.
        return False


@cache
def _compiled() -> Any:
    import jsonschema_rs

    return jsonschema_rs.validator_for(json.loads(schema_text()))


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer each framed document on ``requests`` with one byte, until end of input."""
    _compiled()  # ready before the first document arrives
    while True:
        head = requests.read(FRAME.size)
        if len(head) < FRAME.size:
            return
        (size,) = FRAME.unpack(head)
        payload = requests.read(size)
        if len(payload) < size:
            return
        answers.write(VALID if judge(pickle.loads(payload)) else INVALID)
        answers.flush()


if __name__ == "__main__":  # pragma: no cover - runs as the gate child
    import signal
    import sys

    # Ctrl-C in a terminal reaches the whole process group: the daemon decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)
