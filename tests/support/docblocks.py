"""The command blocks of the documentation, as the doc test runs them.

Every fenced block in ``sh``, ``bash``, ``shell`` or ``console`` is **run** by
``tests/docs/test_doc_blocks.py``, unless an HTML comment right above it (blank lines may
separate them) excuses it with a reason::

    <!-- not-run: needs a real B2 bucket and the b2 command -->

A block that runs may say what it needs and expects::

    <!-- doc-test: setup=backups,disk -->        named set-ups made before the doc's first block
    <!-- doc-test: expect-exit=2 -->             the block must end with this exit status
    <!-- doc-test: world=fresh -->               run in a world (machine) of its own, with the
                                                 other blocks of that name (default: "main")

and a non-shell block (a configuration file) can be written where later blocks read it::

    <!-- doc-test: file=/etc/btrsync/config.toml -->

A marker that is not directly above a code block, an unknown key, a ``not-run`` without a
reason, or both markers on one block are errors: the doc test fails on them before running
anything. ``console`` blocks run their ``$ ``-prompted lines (and their ``\\`` continuations);
the other lines are output and are not compared.

Absolute paths are mapped into the test's world (:class:`PathMap`): ``/data`` becomes
``WORLD/data`` and so on for the prefixes in :data:`MAPPED_PREFIXES`, inside ``file:///`` URLs
too; heredoc bodies (file contents such as an fstab) are left as written. An absolute path a
runnable block names that is neither mapped nor harmless (:data:`HOST_PATHS_ALLOWED`) makes the
test fail before anything runs, so a doc can never make the test write to the real machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SHELL_LANGS = frozenset({"sh", "bash", "shell", "console"})
MARKER_KEYS = frozenset({"setup", "expect-exit", "file", "world"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-run|doc-test)\s*:(?P<body>.*?)-->\s*$")
_LOOSE_MARKER = re.compile(r"<!--\s*(not-run|doc-test|not run|notrun|doctest)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    doc: str                 # the document's path as shown in messages (docs/restore.md)
    line: int                # 1-based line of the block's first content line
    lang: str
    text: str                # the content, with the fence's indentation removed
    not_run: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL_LANGS

    @property
    def runs(self) -> bool:
        return self.is_shell and self.not_run is None

    @property
    def setups(self) -> list[str]:
        return [s for s in self.options.get("setup", "").split(",") if s]

    @property
    def world(self) -> str:
        return self.options.get("world", "main")

    @property
    def expect_exit(self) -> int | None:
        value = self.options.get("expect-exit")
        return None if value is None else int(value)

    def script(self) -> str:
        """The shell text to run, line for line with the document (so line numbers map back)."""
        if self.lang != "console":
            return self.text
        out, continuing = [], False
        for line in self.text.split("\n"):
            if continuing:
                out.append(line)
            elif line.startswith("$ "):
                out.append(line[2:])
            else:
                out.append("")
                continue
            continuing = line.endswith("\\")
        return "\n".join(out)


@dataclass
class ParsedDoc:
    blocks: list[Block]
    problems: list[str]


def _parse_marker(doc: str, lineno: int, kind: str, body: str, problems: list[str]) -> tuple[str | None, dict[str, str]]:
    body = body.strip()
    if kind == "not-run":
        if len(body) < 8:
            problems.append(f"{doc}:{lineno}: 'not-run' needs a reason (what the block needs that a "
                            f"loopback disk cannot give)")
        return body or "?", {}
    options: dict[str, str] = {}
    for item in body.split():
        key, sep, value = item.partition("=")
        if not sep or not value:
            problems.append(f"{doc}:{lineno}: doc-test option {item!r} is not KEY=VALUE")
        elif key not in MARKER_KEYS:
            problems.append(f"{doc}:{lineno}: unknown doc-test option {key!r} "
                            f"(known: {', '.join(sorted(MARKER_KEYS))})")
        elif key in options:
            problems.append(f"{doc}:{lineno}: doc-test option {key!r} given twice")
        else:
            options[key] = value
    if "expect-exit" in options and not options["expect-exit"].isdigit():
        problems.append(f"{doc}:{lineno}: expect-exit must be a number")
    return None, options


def parse_doc(doc: str, text: str) -> ParsedDoc:
    """Every fenced block of ``text`` with its markers, and every problem with the markers."""
    lines = text.split("\n")
    blocks: list[Block] = []
    problems: list[str] = []
    pending: list[tuple[int, str, str]] = []  # (line, kind, body) of markers awaiting their block
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            indent, mark, info = fence.group("indent"), fence.group("fence"), fence.group("info")
            lang = info.lower()
            body: list[str] = []
            j = i + 1
            closing = re.compile(rf"^[ \t]*{re.escape(mark[0])}{{{len(mark)},}}[ \t]*$")
            while j < len(lines) and not closing.match(lines[j]):
                content = lines[j]
                body.append(content[len(indent):] if content.startswith(indent) else content.lstrip())
                j += 1
            if j >= len(lines):
                problems.append(f"{doc}:{i + 1}: code block never closed")
            not_run: str | None = None
            options: dict[str, str] = {}
            kinds = {kind for _, kind, _ in pending}
            if len(kinds) > 1:
                problems.append(f"{doc}:{i + 1}: a block is either run (doc-test) or excused (not-run), "
                                f"not both")
            for mline, kind, mbody in pending:
                nr, opts = _parse_marker(doc, mline, kind, mbody, problems)
                if kind == "not-run":
                    not_run = nr
                for key, value in opts.items():
                    if key in options:
                        problems.append(f"{doc}:{mline}: doc-test option {key!r} given twice")
                    options[key] = value
            block = Block(doc, i + 2, lang, "\n".join(body), not_run, options)
            if "file" in options and block.is_shell:
                problems.append(f"{block.where}: file= is for configuration blocks, not shell blocks")
            if block.expect_exit is not None and not block.is_shell:
                problems.append(f"{block.where}: expect-exit is for shell blocks")
            if options.get("setup") and not block.runs:
                problems.append(f"{block.where}: setup= on a block that does not run")
            blocks.append(block)
            pending = []
            i = j + 1
            continue
        marker = _MARKER.match(line)
        if marker:
            pending.append((i + 1, marker.group("kind"), marker.group("body")))
        elif _LOOSE_MARKER.search(line):
            problems.append(f"{doc}:{i + 1}: malformed marker (write '<!-- not-run: REASON -->' or "
                            f"'<!-- doc-test: KEY=VALUE ... -->' on a line of its own)")
        elif line.strip() and pending:
            problems.append(f"{doc}:{pending[0][0]}: marker is not directly above a code block")
            pending = []
        i += 1
    if pending:
        problems.append(f"{doc}:{pending[0][0]}: marker is not directly above a code block")
    return ParsedDoc(blocks, problems)


# --------------------------------------------------------------------------------------------------
# Paths: the placeholders of the docs, mapped into the test's world

# Longest first, so /var/tmp wins over a shorter prefix that would also match.
MAPPED_PREFIXES = (
    "var/lib/btrsync", "var/.snapshots", "etc/btrsync", "var/tmp", "var/log",
    "data-snapshots", ".snapshots", "data", "mnt", "root", "srv", "home", "tmp",
)

# Absolute paths a runnable block may name on the real machine: they are read, or harmless.
HOST_PATHS_ALLOWED = ("/dev/null", "/dev/zero", "/dev/urandom", "/proc/", "/sys/", "/usr/", "/bin/",
                      "/sbin/")

_PATH_TAIL = r"(?![\w])"
_HEREDOC = re.compile(r"<<(-?)\s*(['\"]?)(\w+)\2")
_ABSOLUTE = re.compile(r"(?:(?<=file://)|(?<![\w./$}~-]))/[\w.][^\s\"'`;|&<>(){}]*")


def _prefix_pattern(prefixes: tuple[str, ...]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
    return re.compile(rf"(?:(?<=file://)|(?<![\w./$}}~-]))/(?:{alternatives}){_PATH_TAIL}")


def _strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a good guess: ``#`` at a word start)."""
    return re.sub(r"(^|\s)#.*$", "", line)


@dataclass
class PathMap:
    """Placeholder paths of the docs → the test's world; plus exact device substitutions."""

    root: Path
    prefixes: tuple[str, ...] = MAPPED_PREFIXES
    devices: dict[str, str] = field(default_factory=dict)  # '/dev/sdX' → '/dev/loop7', '/dev/sdX2' → ...

    def __post_init__(self) -> None:
        self._pattern = _prefix_pattern(self.prefixes)

    def _device_pattern(self) -> re.Pattern[str] | None:
        if not self.devices:
            return None
        names = "|".join(re.escape(d) for d in sorted(self.devices, key=len, reverse=True))
        return re.compile(rf"(?<![\w/])(?:{names})(?![\w])")

    def map_line(self, line: str) -> str:
        line = self._pattern.sub(lambda m: f"{self.root}{m.group(0)}", line)
        devices = self._device_pattern()
        if devices is not None:
            line = devices.sub(lambda m: self.devices[m.group(0)], line)
        return line

    def _code_lines(self, text: str) -> list[tuple[int, str, bool]]:
        """(index, line, is_heredoc_body) for each line of a shell text."""
        out: list[tuple[int, str, bool]] = []
        terminator: tuple[str, bool] | None = None
        for n, line in enumerate(text.split("\n")):
            if terminator is not None:
                word, dash = terminator
                if (line.lstrip("\t") if dash else line) == word:
                    terminator = None
                    out.append((n, line, False))
                else:
                    out.append((n, line, True))
                continue
            out.append((n, line, False))
            heredoc = _HEREDOC.search(_strip_comment(line))
            if heredoc:
                terminator = (heredoc.group(3), heredoc.group(1) == "-")
        return out

    def map_shell(self, text: str) -> str:
        return "\n".join(line if body else self.map_line(line) for _, line, body in self._code_lines(text))

    def map_file(self, text: str) -> str:
        return "\n".join(self.map_line(line) for line in text.split("\n"))

    def unmapped(self, text: str) -> list[str]:
        """Absolute paths in the commands (not comments, not heredoc bodies) that would touch the
        real machine."""
        found: list[str] = []
        devices = tuple(self.devices)
        for _, line, body in self._code_lines(text):
            if body:
                continue
            for match in _ABSOLUTE.finditer(_strip_comment(line)):
                path = match.group(0)
                if self._pattern.match(path) or path.startswith(HOST_PATHS_ALLOWED):
                    continue
                if any(path == d or path.startswith(d + "/") for d in devices):
                    continue
                found.append(path)
        return found


def doc_paths(repo: Path) -> list[Path]:
    """The documents the doc test covers: every docs/*.md, and README.md."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
