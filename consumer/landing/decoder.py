"""Payload decoding in a child process, so that it runs on another core than the stream's parse.

Decoding a payload (``consumer.decode.decode_payload``: JSON, XML, CSV, name=value, the shape key)
is most of the consumer's CPU per row and is pure: a batch's payloads go to a child process as
(text, is_json) pairs and come back as (payload, format, error, shape key) tuples, in order, over
the child's stdin and stdout (a payload that is its input text comes back as a marker, not again). The child holds no other descriptor of ours (stderr goes to
/dev/null) and ends at end of input, i.e. when we close its pipe or die, however we die (a
parent-death signal as well): a killed consumer leaves no worker behind holding anything open.

If the child cannot start or fails, the batch is decoded here instead and decoding stays here from
then on, with a warning: the same results, only slower.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import struct
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from typing import IO, Callable, Sequence

from ..decode import Decoded, decode_payload

__all__ = ["DecodeWorker", "decode_pairs", "payload_decoder", "Pairs", "Results"]

log = logging.getLogger(__name__)

Pairs = Sequence[tuple[str | None, bool]]
Results = list[tuple[str | None, str, str | None, str | None]]

_LEN = struct.Struct("<Q")


@functools.cache
def payload_decoder() -> Callable[..., Decoded]:
    """``decode_payload``, compiled when it can be: the mypyc build of this very ``consumer/decode.py``
    (``consumer._cdecode``, setup.py), which returns the same results in about three quarters of the
    time; else the source. A compiled module older than the source (an edited checkout not
    reinstalled) is never used. ``PAYNORM_COMPILED_DECODER=0`` keeps the source."""
    if os.environ.get("PAYNORM_COMPILED_DECODER", "1").strip().lower() in ("0", "false", "no", "off"):
        return decode_payload
    try:
        from .. import _cdecode  # type: ignore[attr-defined]
    except ImportError:
        log.debug("no compiled payload decoder: decoding with consumer/decode.py")
        return decode_payload
    source = resources.files("consumer").joinpath("decode.py").read_bytes()
    if getattr(_cdecode, "SOURCE_SHA256", None) != hashlib.sha256(source).hexdigest():
        log.warning("the compiled payload decoder was built from another consumer/decode.py: decoding with the"
                    " source (reinstall paynorm to rebuild it)")
        return decode_payload
    return _cdecode.decode_payload  # type: ignore[no-any-return]


def decode_pairs(pairs: Pairs, max_bytes: int) -> Results:
    """Decode (text, is_json) pairs in this process."""
    out: Results = []
    decode = payload_decoder()
    for raw, is_json in pairs:
        d = decode(raw, is_json=is_json, max_bytes=max_bytes)
        out.append((d.payload, d.payload_format, d.decode_error, d.shape_key))
    return out


#: In a worker's answer, in place of a decoded payload that is the payload text it was sent (a JSON
#: object in a jsonb column: most rows), so that text crosses the pipe and pickle once, not twice.
_SAME = 0


def _answer(pairs: Pairs, results: Results) -> list[tuple[object, ...]]:
    """The worker's side: ``results`` with every payload equal to its input replaced by ``_SAME``."""
    return [(_SAME, *r[1:]) if r[0] == raw else r for (raw, _), r in zip(pairs, results)]


def _results(pairs: Pairs, answer: list[tuple[object, ...]]) -> Results:
    """This side: the worker's ``_answer`` back into results, each ``_SAME`` its input text again."""
    return [(raw, *a[1:]) if a[0] == _SAME else a  # type: ignore[misc]  # a payload (str or None) never is
            for (raw, _), a in zip(pairs, answer)]


def _send(stream: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LEN.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: IO[bytes]) -> object | None:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    size = _LEN.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)  # noqa: S301 - our own child, over its private pipe


class DecodeWorker:
    """One decoding child process; ``submit`` returns a future of the decoded batch.

    Batches are decoded one at a time in submission order (one thread talks to the child). Use as a
    context manager, or call ``close``: the child then reaches end of input, exits and is reaped
    (its CPU time counts in ours).
    """

    def __init__(self, max_bytes: int, *, start: bool = True) -> None:
        self.max_bytes = max_bytes
        self._proc: subprocess.Popen[bytes] | None = None
        self._talker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="paynorm-decode")
        self.started = False
        if start:
            self.start()

    def start(self) -> None:
        """Start the child (once): a second Python process costs its start-up (~0.3 s of CPU), which
        only a backlog repays."""
        if self.started:
            return
        self.started = True
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "consumer.landing._decode_worker", str(os.getpid())],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, close_fds=True)
        except OSError as e:
            log.warning("payload decoding stays in this process: the decode worker did not start (%s)", e)

    def __enter__(self) -> DecodeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def submit(self, pairs: Pairs) -> Future[Results]:
        """Decode ``pairs`` (not to be changed until the future is done)."""
        return self._talker.submit(self._decode, pairs)

    def _decode(self, pairs: Pairs) -> Results:
        proc = self._proc
        if proc is not None and pairs:
            try:
                assert proc.stdin is not None and proc.stdout is not None
                _send(proc.stdin, (self.max_bytes, pairs))
                answer = _receive(proc.stdout)
                if isinstance(answer, list) and len(answer) == len(pairs):
                    return _results(pairs, answer)
                reason = "it ended" if answer is None else f"it answered {type(answer).__name__}"
            except (OSError, ValueError, EOFError, pickle.PickleError) as e:
                reason = str(e) or type(e).__name__
            log.warning("payload decoding moves back to this process: the decode worker failed (%s)", reason)
            self._stop()
        return decode_pairs(pairs, self.max_bytes)

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Finish what was submitted, then end the child and reap it."""
        self._talker.shutdown(wait=True)
        self._stop()

