"""Build the optional C parser of send streams (``btrsync.sendstream._native``).

Everything else lives in pyproject.toml. The extension is optional: without a C compiler (or
with a failing build) the install goes on and btrsync uses the pure-Python parser of the same
interface (``btrsync.sendstream._pyparser``). ``BTRSYNC_NO_NATIVE=1`` skips the build.
"""

from __future__ import annotations

import hashlib
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the optional extension cannot be built."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler at all, broken toolchain, ...
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    @staticmethod
    def _skip(exc: BaseException) -> None:
        print(f"warning: btrsync's C send-stream parser was not built ({exc}); "
              "the pure-Python parser will be used", file=sys.stderr)


SOURCE = "native/sendstream.c"
ext_modules = []
if os.environ.get("BTRSYNC_NO_NATIVE") != "1":
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), SOURCE), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    ext_modules.append(Extension(
        "btrsync.sendstream._native",
        sources=[SOURCE],
        # lets the tests notice a stale in-place build (the .so older than the C source)
        define_macros=[("BTRSYNC_SOURCE_SHA256", f'"{digest}"')],
        extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                            "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
        optional=True,
    ))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
