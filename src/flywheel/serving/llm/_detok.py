"""Incremental detokenization with stop strings.

Each new token's text is the difference between decoding a short window of tokens with and
without it (so multi-byte characters and tokenizers that drop a word's leading space decode
right); a trailing replacement character (an incomplete UTF-8 sequence) waits for the next token.
Stop strings are searched in the accumulated text, so a match split across tokens is found; the
longest tail that could still begin a stop string is held back until it is decided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

_CONTEXT = 5  # prompt tokens decoded before the first output token (leading-space handling)


class IncrementalDetokenizer:
    """The text of one request's output tokens, released as it becomes final."""

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        prompt_ids: Sequence[int],
        stop: Sequence[str] = (),
    ) -> None:
        self._decode = decode
        self._ids = list(prompt_ids[-_CONTEXT:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._stop = tuple(stop)
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self.text = ""  # the output text so far (cut at a stop string once one matched)
        self._released = 0

    def add(self, token_id: int) -> str | None:
        """Add a token; returns the stop string it completed, or ``None``."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            delta = full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
        else:
            return None
        before = len(self.text)
        self.text += delta
        if not self._stop:
            return None
        start = max(0, before - self._max_stop + 1)
        best: tuple[int, str] | None = None
        for stop in self._stop:
            at = self.text.find(stop, start)
            if at != -1 and (best is None or at < best[0]):
                best = (at, stop)
        if best is None:
            return None
        self.text = self.text[: best[0]]
        return best[1]

    def release(self, final: bool = False) -> str:
        """Text that is now certain (all of it when ``final``)."""
        end = len(self.text)
        if not final and self._stop:
            end -= self._held_back()
        end = max(end, self._released)
        out = self.text[self._released : end]
        self._released = end
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for size in range(min(self._max_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(stop.startswith(tail) for stop in self._stop):
                return size
        return 0


__all__ = ["IncrementalDetokenizer"]
