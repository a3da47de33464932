"""logind's sleep inhibitor lock, held by btrsync itself for a job's run (``inhibit_sleep = true``).

``org.freedesktop.login1.Manager.Inhibit("sleep", "btrsync", WHY, "block")`` over the system bus
returns a file descriptor; the lock lasts as long as that descriptor is open (``systemd-inhibit
--list`` shows it), and the kernel closes it when btrsync exits however it exits.  btrsync takes it
in its own process rather than under a ``systemd-inhibit`` wrapper: a wrapper is the unit's main
process, so ``systemctl stop`` (SIGTERM to the main process, ``KillMode=mixed``) would reach the
wrapper, not btrsync, and the run could not record itself as terminated for the next one to resume.

Fails soft: without logind (a container, a host without systemd, the D-Bus library missing) or
when logind refuses, the run goes on without the lock and one warning says why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

BUS_TIMEOUT = 5.0  # seconds: a hung bus must not hold a backup


def take_sleep_lock(why: str) -> int | None:
    """The inhibitor's file descriptor, or None (logged) when it cannot be had."""
    try:
        from jeepney import DBusAddress, new_method_call
        from jeepney.io.blocking import open_dbus_connection
        from jeepney.wrappers import DBusErrorResponse, unwrap_msg
    except ImportError as exc:
        log.warning("sleep not inhibited: the D-Bus library (jeepney) is missing: %s", exc)
        return None
    login1 = DBusAddress("/org/freedesktop/login1", bus_name="org.freedesktop.login1",
                         interface="org.freedesktop.login1.Manager")
    try:
        conn = open_dbus_connection(bus="SYSTEM", enable_fds=True, auth_timeout=BUS_TIMEOUT)
    except (OSError, ValueError, RuntimeError) as exc:
        log.warning("sleep not inhibited: no system D-Bus (is logind running?): %s", exc)
        return None
    try:
        msg = new_method_call(login1, "Inhibit", "ssss", ("sleep", "btrsync", why, "block"))
        reply = conn.send_and_get_reply(msg, timeout=BUS_TIMEOUT)
        (received,) = unwrap_msg(reply)
        fd = int(received.to_raw_fd())
        # children (btrfs send, ssh, hooks) must not hold the lock past btrsync's exit
        os.set_inheritable(fd, False)
        return fd
    except DBusErrorResponse as exc:
        log.warning("sleep not inhibited: logind refused the lock: %s", exc)
        return None
    except (OSError, TimeoutError, ValueError) as exc:
        log.warning("sleep not inhibited: the call to logind failed: %s", exc)
        return None
    finally:
        conn.close()


@contextmanager
def sleep_inhibited(why: str, *, enabled: bool = True) -> Iterator[int | None]:
    """Hold the sleep lock for the block (when ``enabled``); yields its fd or None."""
    fd = take_sleep_lock(why) if enabled else None
    if fd is not None:
        log.info("sleep inhibited while %s", why)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)
