"""The KV-cache block pool: fixed-size blocks, reference counts and the prefix cache.

A sequence's keys and values live in blocks of ``block_size`` token slots; its block table lists
them in order. A *full* block whose tokens have been computed is registered under a hash of the
whole token prefix up to its end (parent hash + its own tokens), so another sequence starting with
the same tokens reuses it instead of computing it again. Blocks no sequence holds stay in the
free list in least-recently-freed order and keep their cached contents until they are reused
(evicted) for something else; blocks that hold nothing reusable are handed out first.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence


def block_hash(parent: bytes, tokens: Sequence[int]) -> bytes:
    """The prefix-cache key of a full block: sha256 over the parent's key and its token ids."""
    return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()


def extend_prefix_hashes(
    tokens: Sequence[int], block_size: int, known: list[bytes], upto: int | None = None
) -> None:
    """Extend ``known`` (the keys of the first blocks of ``tokens``) to the full blocks of
    ``tokens[:upto]`` (all of ``tokens`` when ``upto`` is ``None``)."""
    end = len(tokens) if upto is None else upto
    parent = known[-1] if known else b""
    for i in range(len(known), end // block_size):
        parent = block_hash(parent, tokens[i * block_size : (i + 1) * block_size])
        known.append(parent)


class BlockPool:
    """Reference-counted KV blocks with a prefix cache; not thread-safe (one engine thread)."""

    def __init__(self, num_blocks: int, *, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks: must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._cached: dict[bytes, int] = {}
        # Blocks nobody holds, in eviction order (first = next to be handed out).
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def cached_block(self, key: bytes) -> int | None:
        """The block holding the prefix ``key``, or ``None``."""
        return self._cached.get(key) if self.enable_prefix_caching else None

    def is_free(self, block: int) -> bool:
        return block in self._free

    def acquire(self, block: int) -> None:
        """Take a reference to a cached block (removing it from the free list if idle)."""
        if self._ref[block] == 0:
            del self._free[block]
        self._ref[block] += 1

    def allocate(self, count: int) -> list[int]:
        """``count`` fresh blocks (evicting cached contents). Caller checks ``num_free`` first."""
        if count > len(self._free):
            raise RuntimeError(f"allocate({count}) with only {len(self._free)} free blocks")
        out = []
        for _ in range(count):
            block, _ = self._free.popitem(last=False)
            key = self._hash[block]
            if key is not None:
                if self._cached.get(key) == block:
                    del self._cached[key]
                self._hash[block] = None
            self._ref[block] = 1
            out.append(block)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; idle ones join the free list (tail blocks first)."""
        for block in reversed(blocks):
            self._ref[block] -= 1
            if self._ref[block] == 0:
                self._free[block] = None
                if self._hash[block] is None:
                    # Nothing reusable: hand it out before blocks that hold a cached prefix.
                    self._free.move_to_end(block, last=False)

    def register(self, block: int, key: bytes) -> None:
        """Record that ``block`` holds the computed full-block prefix ``key``."""
        if not self.enable_prefix_caching or self._hash[block] is not None:
            return
        if key not in self._cached:
            self._cached[key] = block
            self._hash[block] = key


__all__ = ["BlockPool", "block_hash", "extend_prefix_hashes"]
