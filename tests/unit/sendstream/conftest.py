"""Every parser test runs against both implementations: the C one and the pure-Python fallback.

The C parser is skipped where it was not built (no compiler at install time), except under CI
(env ``CI`` set), where the toolchain is installed and a missing build is a failure.
"""

from __future__ import annotations

import os

import pytest

from btrsync.sendstream import parser


def require_native() -> None:
    if parser.native_available:
        return
    if os.environ.get("CI"):
        pytest.fail("CI must have the C send-stream parser built (pip install -e . with gcc)",
                    pytrace=False)
    pytest.skip("the C send-stream parser is not built")


@pytest.fixture(params=["python", "native"])
def Parser(request: pytest.FixtureRequest):  # noqa: N802 - it is a class
    """The StreamParser class of one implementation."""
    if request.param == "native":
        require_native()
        return parser.NativeStreamParser
    return parser.PyStreamParser


@pytest.fixture
def native():
    """The C module (skipped or failed as above when it is not built)."""
    require_native()
    from btrsync.sendstream import _native

    return _native
