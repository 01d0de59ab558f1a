"""Where the web listens when told "every address": `*:PORT` in CI_AUTOSCALER_BIND or
CI_AUTOSCALER_ADMIN_BIND (and the default, `*:$PORT` or `*:8080`) becomes the gunicorn binds
that reach the pod on whichever IP families it has. 0.0.0.0 alone, the default before, is IPv4
only: on an IPv6-only cluster the pod's one address was never listened on.

The kernel decides (Linux ipv6(7)): an IPv6 socket on `::` also takes IPv4 connections (as
::ffff:a.b.c.d) unless IPV6_V6ONLY is on, which sysctl net.ipv6.bindv6only sets by default;
and a kernel or network namespace without IPv6 cannot make an AF_INET6 socket at all.
"""

import socket

EVERY_ADDRESS = "*"
IPV4_ANY, IPV6_ANY = "0.0.0.0", "[::]"


def _can_listen(family: int, address: str) -> tuple[bool, bool]:
    """(a socket of `family` binds `address`, it is IPv6-only); the bind is on port 0 and let
    go at once."""
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # EAFNOSUPPORT: no such family here
        return False, False
    with probe:
        try:
            probe.bind((address, 0))
        except OSError:  # EADDRNOTAVAIL: the family is off (disable_ipv6)
            return False, False
        if family != socket.AF_INET6:
            return True, False
        return True, bool(probe.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))


def every_address_hosts() -> list[str]:
    """The hosts to bind for every address of this pod: `[::]` when one IPv6 socket takes
    both families (dual-stack) or only IPv6 is there; `[::]` and `0.0.0.0` when IPv6 sockets
    are IPv6-only and IPv4 is there too; `0.0.0.0` without IPv6."""
    ipv6, v6only = _can_listen(socket.AF_INET6, "::")
    if not ipv6:
        return [IPV4_ANY]
    if v6only and _can_listen(socket.AF_INET, IPV4_ANY)[0]:
        return [IPV6_ANY, IPV4_ANY]
    return [IPV6_ANY]


def expand(bind: str) -> list[str]:
    """gunicorn's binds for one of ours: `*:PORT` as every address (above), any other as it
    is written; none for an empty one (no admin port)."""
    if not bind:
        return []
    host, sep, port = bind.rpartition(":")
    if sep and host == EVERY_ADDRESS:
        return [f"{h}:{port}" for h in every_address_hosts()]
    return [bind]
