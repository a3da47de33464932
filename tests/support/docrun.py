"""Run a document's blocks in one bash session, the way a reader pastes them into one terminal.

Each block is written to its own file (paths mapped, line for line with the document) and
``source``-d by one ``bash`` process under ``set -euo pipefail``, so variables and the working
directory carry from block to block as they would for a reader. The first failing command stops
the session; the failure names the document's file and line, the command and its exit status,
and shows the output of the block. A block marked ``expect-exit=N`` runs in a subshell and must
end with exactly that status.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.docblocks import Block, PathMap

OUTPUT_TAIL = 80


class DocFailure(AssertionError):
    pass


@dataclass
class Session:
    blocks: list[Block]
    pathmap: PathMap
    workdir: Path
    env: dict[str, str]
    cwd: Path
    timeout: float = 300.0

    def _driver(self) -> str:
        status = self.workdir / "status"
        lines = [
            "set -euo pipefail",
            f"__doc_status={shlex.quote(str(status))}",
            # where the failing command is: its line in the block file, or 0 for the driver (a block
            # whose last list, e.g. `a && b`, failed without stopping inside the block)
            "__doc_err() { local rc=$? line=${BASH_LINENO[0]}; "
            "case ${BASH_SOURCE[1]:-} in */driver.sh) line=0;; esac; "
            "printf '%s\\t%s\\t%s\\n' \"$rc\" \"$line\" \"$BASH_COMMAND\" > \"$__doc_status.err\"; }",
            "trap __doc_err ERR",
        ]
        for n, block in enumerate(self.blocks):
            path = self.workdir / f"b{n:03d}.sh"
            path.write_text(self.pathmap.map_shell(block.script()) + "\n")
            lines.append(f"printf '%s' {n} > \"$__doc_status\"")
            lines.append(f"printf '\\n### %s\\n' {shlex.quote(block.where)}")
            if block.expect_exit is None:
                lines.append(f"source {shlex.quote(str(path))}")
            else:
                lines += [
                    "trap - ERR; set +e",
                    f"( set -euo pipefail; source {shlex.quote(str(path))} )",
                    "__doc_rc=$?; set -e",
                    f"if [ \"$__doc_rc\" -ne {block.expect_exit} ]; then "
                    f"printf '%s\\texpect\\t\\n' \"$__doc_rc\" "
                    "> \"$__doc_status.err\"; exit 1; fi",
                    "trap __doc_err ERR",
                ]
        lines.append("printf done > \"$__doc_status\"")
        return "\n".join(lines) + "\n"

    def run(self) -> str:
        """Run every block; return the session's output, or raise :class:`DocFailure`."""
        driver = self.workdir / "driver.sh"
        driver.write_text(self._driver())
        log_path = self.workdir / "output.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(["bash", str(driver)], cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        output = self._translate(log_path.read_text(errors="replace"))
        state = (self.workdir / "status").read_text() if (self.workdir / "status").exists() else ""
        if rc == 0 and state == "done":
            return output
        index = int(state) if state.isdigit() else 0
        block = self.blocks[index]
        err_path = self.workdir / "status.err"
        if rc is None:
            headline = f"{block.where}: the block did not finish within {self.timeout:.0f} s"
        elif err_path.exists():
            code, line, command = (err_path.read_text().rstrip("\n").split("\t", 2) + ["", ""])[:3]
            where = f"{block.doc}:{block.line + int(line) - 1}" if line.isdigit() and int(line) > 0 else block.where
            if line == "expect":
                headline = f"{block.where}: the block ended with exit status {code}, expected exit {block.expect_exit}"
            elif line == "0":
                headline = f"{block.where}: the block ended with exit status {code}"
            else:
                headline = f"{where}: `{command}` exited {code}"
        else:
            headline = f"{block.where}: the block failed (exit {rc}); see its output"
        headline = headline.replace(str(self.pathmap.root), "W")
        raise DocFailure(f"{headline}\n--- output from {block.where} on ---\n{self._tail(output, block)}")

    def _translate(self, output: str) -> str:
        """``bNNN.sh: line L`` (bash's own messages, e.g. an unbound variable) → ``doc:line``."""

        def repl(m: re.Match[str]) -> str:
            block = self.blocks[int(m.group(1))]
            return f"{block.doc}:{block.line + int(m.group(2)) - 1}"

        output = re.sub(r"\S*/b(\d{3})\.sh: line (\d+)", repl, output)
        return output.replace(str(self.pathmap.root), "W")

    @staticmethod
    def _tail(output: str, block: Block) -> str:
        marker = f"### {block.where}\n"
        part = output[output.rfind(marker):] if marker in output else output
        lines = part.splitlines()
        if len(lines) > OUTPUT_TAIL:
            lines = [f"... ({len(lines) - OUTPUT_TAIL} lines)", *lines[-OUTPUT_TAIL:]]
        return "\n".join(lines)
