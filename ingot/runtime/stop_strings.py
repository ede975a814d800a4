"""Stop strings, matched in O(new text) per token with an Aho-Corasick automaton over a request's stops.

Searching the text for every stop at every token costs O(stops x their length) per token, and finding
how much of the tail to hold back (it may still become a stop) O(length^2): 16 stops of 1,024
characters took ~0.7 ms per token per sequence on the engine's thread (issue 21). The automaton reads
each new character once, whatever the number and length of the stops:

    node     the longest suffix of the text read so far that is a prefix of some stop (a trie node)
    read c   follow fail links until a node has a child c (or the root is reached), step to that child;
             amortised O(1): each step down adds one to the depth, each fail link removes at least one
    match    ends[node] > 0: a stop of that length ends at this character (the longest one that does)
    hold     depth[node]: that many trailing characters may still become a stop

The first stop found is the one that ends earliest, the longest among those ending at the same
character: what a token-by-token stream meets first, however the text was chunked. Building costs
O(total characters of the stops), once per distinct stop list (cached: a request's n samples share it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache

_CHARS = 0x110000  # one key per (node, code point): node * _CHARS + ord(char)


@dataclass(frozen=True)
class _Automaton:
    goto: dict[int, int]  # node * _CHARS + ord(char) -> child node; node 0 is the root (the empty prefix)
    fail: list[int]  # per node: the node of its longest proper suffix that is a prefix of some stop
    depth: list[int]  # per node: its prefix's length in characters
    ends: list[int]  # per node: the length of the longest stop that is a suffix of its prefix, 0 if none


@lru_cache(maxsize=16)
def _automaton(stops: tuple[str, ...]) -> _Automaton:
    goto: dict[int, int] = {}
    depth, ends, children = [0], [0], [[]]  # children: (code point, child) per node, for the BFS only
    for stop in stops:
        node = 0
        for char in stop:
            key = node * _CHARS + ord(char)
            if key not in goto:
                goto[key] = len(depth)
                children[node].append((ord(char), len(depth)))
                depth.append(depth[node] + 1)
                ends.append(0)
                children.append([])
            node = goto[key]
        ends[node] = len(stop)
    fail = [0] * len(depth)
    queue = deque(child for _, child in children[0])  # depth 1: fail to the root, ends as built
    while queue:  # breadth first: a node's fail target is shallower, so it is final when read
        node = queue.popleft()
        for code, child in children[node]:
            target = fail[node]
            while target and target * _CHARS + code not in goto:
                target = fail[target]
            fail[child] = goto.get(target * _CHARS + code, 0)
            ends[child] = ends[child] or ends[fail[child]]
            queue.append(child)
    return _Automaton(goto, fail, depth, ends)


class StopMatcher:
    """Where one request's text stands in the automaton of its stop strings."""

    def __init__(self, stops: list[str]) -> None:
        self._automaton = _automaton(tuple(stops))
        self._node = 0
        self._read = 0  # characters of the text already fed

    def feed(self, text: str) -> tuple[int, str] | None:
        """Read text[self._read:] (text only grows); the first stop it completes as (index where the
        stop begins, the stop), or None."""
        goto, fail, ends = self._automaton.goto, self._automaton.fail, self._automaton.ends
        node = self._node
        for index in range(self._read, len(text)):
            code = ord(text[index])
            while (child := goto.get(node * _CHARS + code)) is None and node:
                node = fail[node]
            node = 0 if child is None else child
            if ends[node]:
                self._node, self._read = node, index + 1
                begin = index + 1 - ends[node]
                return begin, text[begin:index + 1]
        self._node, self._read = node, len(text)
        return None

    @property
    def hold_back(self) -> int:
        """Trailing characters to withhold from a stream: the longest tail of the text that is a
        proper prefix of some stop (once a stop is complete, feed has returned it)."""
        return self._automaton.depth[self._node]
