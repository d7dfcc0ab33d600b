"""XDP offload of the relay's data path (REFERENCE.md 3.4): ``bpf/relay_xdp.c`` loaded with BCC.

``maps`` is pure (packing and mirroring); ``headers``, ``syscall`` and ``loader``
deal with the kernel; ``offload`` is what the relay wires in.  Importing this
package needs neither BCC nor root: failures surface from ``XdpOffload.start``.
"""

from firezone.relay.ebpf.loader import XdpOffloadError, XdpProgram
from firezone.relay.ebpf.offload import AttachMode, XdpOffload, XdpOffloadService

__all__ = ["AttachMode", "XdpOffload", "XdpOffloadError", "XdpOffloadService", "XdpProgram"]
