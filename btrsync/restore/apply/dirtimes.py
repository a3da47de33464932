"""A value per directory path (its last utimes, or a mode held back), kept true across renames.

Directory times are applied when they come and again when the link ends (later entries change a
directory's mtime); an unprivileged restore holds back directory modes without ``u+rwx`` until the
whole chain is applied. Both need to know where a directory is *now*, after the renames and
rmdirs the stream made since: a tree of path components that moves with them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class _Node:
    __slots__ = ("children", "times")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.times: Any = None  # the value kept for this path (times, or a mode)


class DirTimes:
    """The last utimes of each directory in this link, keyed by path, kept true across renames."""

    def __init__(self) -> None:
        self.root = _Node()

    def _walk(self, parts: list[str], create: bool) -> _Node | None:
        node = self.root
        for part in parts:
            nxt = node.children.get(part)
            if nxt is None:
                if not create:
                    return None
                nxt = node.children[part] = _Node()
            node = nxt
        return node

    def set(self, parts: list[str], times: Any) -> None:
        node = self._walk(parts, True)
        assert node is not None
        node.times = times

    def detach(self, parts: list[str]) -> _Node | None:
        if not parts:
            return None
        parent = self._walk(parts[:-1], False)
        return None if parent is None else parent.children.pop(parts[-1], None)

    def move(self, src: list[str], dst: list[str]) -> None:
        node = self.detach(src)
        self.detach(dst)
        if node is not None:
            parent = self._walk(dst[:-1], True)
            assert parent is not None
            parent.children[dst[-1]] = node

    def items(self) -> Iterable[tuple[list[str], Any]]:
        """Parents before their children."""
        stack: list[tuple[list[str], _Node]] = [([], self.root)]
        while stack:
            parts, node = stack.pop()
            if node.times is not None:
                yield parts, node.times
            for name, child in node.children.items():
                stack.append(([*parts, name], child))
