"""The C parser built with AddressSanitizer (and UBSan) survives the fuzzer without a report.

The extension is compiled a second time, instrumented, into a temporary directory; a subprocess
with libasan preloaded (Python itself is not instrumented) loads that build and runs
``asan_fuzz.py`` for PARSER_ASAN_SECONDS (default 8).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "native" / "sendstream.c"
SECONDS = os.environ.get("PARSER_ASAN_SECONDS", "8")


def _need(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must be able to build the C parser with AddressSanitizer: {what}", pytrace=False)
    pytest.skip(what)


def _sanitizer_build(tmp_path: Path) -> tuple[Path, str]:
    gcc = shutil.which("gcc")
    if gcc is None:
        _need("no gcc")
    libasan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        _need("gcc has no libasan (Debian: libasan8)")
    out = tmp_path / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    cmd = [gcc, "-shared", "-fPIC", "-g", "-O1", "-std=c11", "-Wall", "-Wextra", "-Werror",
           "-Wno-unused-parameter", "-Wno-missing-field-initializers", "-Wno-cast-function-type",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
           f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(out)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    return out, libasan


def test_portable_build_compiles_without_warnings(tmp_path: Path) -> None:
    """The code for CPUs without the CRC32C instruction (e.g. arm64) builds cleanly, and works."""
    gcc = shutil.which("gcc")
    if gcc is None:
        _need("no gcc")
    out = tmp_path / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    cmd = [gcc, "-shared", "-fPIC", "-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
           "-Wno-missing-field-initializers", "-Wno-cast-function-type", "-DBTRSYNC_NO_HW_CRC",
           f"-I{sysconfig.get_paths()['include']}", str(SOURCE), "-o", str(out)]
    build = subprocess.run(cmd, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location("
            "'btrsync.sendstream._native', sys.argv[1]); m = importlib.util.module_from_spec(s); "
            "s.loader.exec_module(m); assert m.crc32c_implementation() == 'slice-by-8'; "
            "assert not m.crc32c_hardware_available; "
            "assert m.crc32c(b'123456789', 0xFFFFFFFF) ^ 0xFFFFFFFF == 0xE3069283; print('ok')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env,
                         cwd=REPO)
    assert run.stdout.strip() == "ok", run.stderr


@pytest.mark.slow
def test_native_parser_under_address_sanitizer(tmp_path: Path) -> None:
    module, libasan = _sanitizer_build(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BTRSYNC_", "ASAN_", "UBSAN_"))}
    env.update(LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0:halt_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", PYTHONMALLOC="malloc",
               PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("asan_fuzz.py")), str(module),
                           SECONDS], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    report = proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "ERROR: AddressSanitizer" not in proc.stderr, report
    assert "runtime error:" not in proc.stderr, report
    assert proc.returncode == 0, report
    assert "asan fuzz:" in proc.stdout, report
