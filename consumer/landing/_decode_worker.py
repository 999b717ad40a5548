"""The decode worker's main loop (``python -m consumer.landing._decode_worker``; see decoder.py).

Reads (max_bytes, pairs) requests from stdin and answers each with its decoded tuples on stdout;
ends at end of input. Asks the kernel to kill it if its parent dies first (Linux), and exits at
once if the parent is already gone. Ignores SIGINT and SIGTERM (the consumer's to handle).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from .decoder import _answer, _receive, _send, decode_pairs

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: end of input still ends us
        return
    if os.getppid() != parent:  # the parent (its pid is our argument) died before the signal was armed
        os._exit(0)


def main() -> None:
    # Ctrl-C or a SIGTERM to the whole process group is for the consumer, which then closes our
    # input: we end with it, after answering what it already sent, instead of dying mid-answer.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid())
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        request = _receive(stdin)
        if request is None:
            return
        max_bytes, pairs = request  # type: ignore[misc]
        _send(stdout, _answer(pairs, decode_pairs(pairs, max_bytes)))


if __name__ == "__main__":
    main()
