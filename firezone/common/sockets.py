"""Socket tuning shared by every UDP data path (relay, tunnel)."""

from __future__ import annotations

import socket
import sys

#: Linux's SO_SNDBUFFORCE / SO_RCVBUFFORCE: Python's socket module does not export them.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
DEFAULT_BUFFER = 4 * 1024 * 1024


def grow_buffers(sock: socket.socket, size: int = DEFAULT_BUFFER) -> tuple[int, int]:
    """Ask for ``size``-byte kernel buffers, above ``rmem_max`` when privileged.

    Bursts of datagrams overflow the default ~208 KiB queue long before the
    process is busy.  Returns the (receive, send) sizes the kernel granted.
    """
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            if not sys.platform.startswith("linux"):
                raise OSError
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass
    try:
        return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    except (OSError, AttributeError):
        return (0, 0)
