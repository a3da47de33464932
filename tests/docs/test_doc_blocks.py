"""The documentation is tested: every shell block of README.md and docs/*.md runs, or says why not.

Conventions (full text in ``tests/support/docblocks.py`` and DESIGN.md): a ```` ```sh ```` /
``bash`` / ``shell`` / ``console`` block runs on a throwaway loopback machine
(``tests/support/docworld.py``) unless ``<!-- not-run: REASON -->`` is right above it;
``<!-- doc-test: setup=NAME ... -->`` names what it needs. ``test_blocks_are_marked`` needs no
root and fails on a malformed marker or on a runnable block that names a path of the real
machine; ``test_doc_runs`` runs the blocks of each document, one bash session per world, and
fails naming the file and line of the first failing command.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.docblocks import Block, ParsedDoc, PathMap, doc_paths, parse_doc
from tests.support.docrun import Session
from tests.support.docworld import REPO_ROOT, SETUP_ORDER, DocWorld
from tests.support.loopfs import require_loop_btrfs

DOCS = doc_paths(REPO_ROOT)


def _parsed(path: Path) -> ParsedDoc:
    return parse_doc(str(path.relative_to(REPO_ROOT)), path.read_text())


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(REPO_ROOT)) for p in paths]


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_blocks_are_marked(doc: Path) -> None:
    parsed = _parsed(doc)
    problems = list(parsed.problems)
    probe = PathMap(Path("/W"), devices={"/dev/sdX": "/dev/loopN", **{f"/dev/sdX{n}": f"/dev/loopNp{n}"
                                                                       for n in range(1, 10)}})
    for block in parsed.blocks:
        unknown = [s for s in block.setups if s not in SETUP_ORDER]
        if unknown:
            problems.append(f"{block.where}: unknown setup {', '.join(unknown)} (known: {', '.join(SETUP_ORDER)})")
        if block.runs:
            for path in probe.unmapped(block.script()):
                problems.append(f"{block.where}: {path} would be the real machine's: use a mapped placeholder "
                                f"(tests/support/docblocks.py MAPPED_PREFIXES) or excuse the block")
    assert not problems, "\n".join(problems)


def _groups(parsed: ParsedDoc) -> dict[str, list[Block]]:
    groups: dict[str, list[Block]] = {}
    for block in parsed.blocks:
        if block.runs or ("file" in block.options):
            groups.setdefault(block.world, []).append(block)
    return {name: blocks for name, blocks in groups.items() if any(b.runs for b in blocks)}


def _as_shell(block: Block, n: int, files: Path, pathmap: PathMap) -> Block:
    """A ``file=`` block becomes one command that installs its (mapped) content at the path."""
    if block.is_shell:
        return block
    name = f"f{n:03d}"
    (files / name).write_text(pathmap.map_file(block.text) + "\n")
    command = f'install -D -m 0600 "$__doc_files/{name}" {block.options["file"]}'
    return replace(block, lang="sh", text=command, options={})


RUNNABLE = [d for d in DOCS if _groups(_parsed(d))]


@pytest.fixture
def world_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    require_loop_btrfs()
    worlds: list[DocWorld] = []

    def s3_server():  # started only when a block asks for setup=b2
        from tests.support.s3server import session_server
        return session_server(request)

    def make(name: str) -> DocWorld:
        world = DocWorld(tmp_path / name, s3_server=s3_server)
        worlds.append(world)
        return world.open()

    try:
        yield make
    finally:
        errors = []
        for world in reversed(worlds):
            try:
                world.close()
            except Exception as exc:  # noqa: BLE001 - close every world, then report
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.mark.btrfs
@pytest.mark.parametrize("doc", RUNNABLE, ids=_ids(RUNNABLE))
def test_doc_runs(doc: Path, world_factory, tmp_path: Path) -> None:
    parsed = _parsed(doc)
    assert not parsed.problems, "\n".join(parsed.problems)
    for name, blocks in _groups(parsed).items():
        world = world_factory(f"world-{name}")
        setups = [s for b in blocks for s in b.setups]
        world.setup(setups)
        pathmap = PathMap(world.root, devices=world.devices)
        work = tmp_path / f"session-{name}"
        files = work / "files"
        files.mkdir(parents=True)
        env = {**world.env(), "__doc_files": str(files)}
        session = Session([_as_shell(b, n, files, pathmap) for n, b in enumerate(blocks)], pathmap, work, env,
                          cwd=world.root / "root")
        session.run()
