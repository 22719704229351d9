"""A private X server (Xvfb) for headless runs, so napari can render and screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from napari_ivd.errors import IvdError


def has_display() -> bool:
    """True when a windowing system is reachable (always on macOS/Windows)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@contextmanager
def virtual_display(size: tuple[int, int] = (1600, 1000)) -> Iterator[str]:
    """Start Xvfb on a free display number, point ``DISPLAY`` at it, stop it afterwards.

    Raises
    ------
    IvdError
        If Xvfb is not installed or does not start.
    """
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise IvdError(
            "no display and no Xvfb to render on: install it (Debian/Ubuntu: apt-get install xvfb) or run on a desktop"
        )
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_fd), "-screen", "0", f"{size[0]}x{size[1]}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        number = pipe.readline().strip()
    if not number:
        proc.kill()
        raise IvdError("Xvfb did not start (no display number reported); try `xvfb-run -a napari-ivd demo`")
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    try:
        yield os.environ["DISPLAY"]
    finally:
        if previous is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = previous
        proc.terminate()
        proc.wait(timeout=10)
