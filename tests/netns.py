"""Hosts for partition tests: network namespaces joined to this one by veth pairs (Linux, root).

Each Host is a namespace with one veth pair: `<root side>` keeps `x.x.x.1/30` here, the
namespace's end has `x.x.x.2/30` and loopback, and nothing else: no default route, so a
process in it can reach the root side's address and nothing beyond. `cut()` takes the
namespace's end down (packets are dropped, open connections hang as in a real partition);
`heal()` brings it back. Names are unique per run; `close()` removes everything and is safe
to call twice or after a failed `open()`.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess

SUPERNET = ipaddress.ip_network("10.213.0.0/16")  # the test's own addresses: nothing else is ever a target


class Unavailable(Exception):
    """Namespaces cannot be made here (not root, no `ip`, no CAP_NET_ADMIN): the reason, for a skip."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def check_available() -> None:
    """Raise Unavailable with the reason when namespaces cannot be made here."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise Unavailable("network namespaces need root (`ip netns add`); CI runs the suite as root")
    if shutil.which("ip") is None:
        raise Unavailable("the `ip` command (iproute2) is not installed")


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """`count` /30 subnets of SUPERNET that no interface here uses yet (other runs may hold some)."""
    used = set()
    for line in ip("-o", "-4", "addr", "show").stdout.splitlines():
        for word in line.split():
            if "/" in word and word[0].isdigit():
                try:
                    used.add(ipaddress.ip_interface(word).network)
                except ValueError:
                    pass
    candidates = [n for n in SUPERNET.subnets(new_prefix=30) if not any(n.overlaps(u) for u in used)]
    return random.sample(candidates, count)


class Host:
    """One namespace joined by one veth pair. Args: tag: unique per run (interface names are at most 15 bytes)."""

    def __init__(self, tag: str, subnet: ipaddress.IPv4Network):
        self.ns = f"{tag}ns"
        self.outer = f"{tag}o"  # the root namespace's end
        self.inner = f"{tag}i"  # the host's end
        first, second = list(subnet.hosts())[:2]
        self.gateway = str(first)  # where the host reaches the root namespace (the forwarder listens there)
        self.address = str(second)
        self.prefix = subnet.prefixlen
        self.opened = False

    def open(self) -> "Host":
        self.opened = True
        result = ip("netns", "add", self.ns, check=False)
        if result.returncode != 0:
            raise Unavailable(f"`ip netns add` failed: {result.stderr.strip()}")
        ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        ip("link", "set", self.inner, "netns", self.ns)
        ip("addr", "add", f"{self.gateway}/{self.prefix}", "dev", self.outer)
        ip("link", "set", self.outer, "up")
        ip("-n", self.ns, "addr", "add", f"{self.address}/{self.prefix}", "dev", self.inner)
        ip("-n", self.ns, "link", "set", "lo", "up")
        ip("-n", self.ns, "link", "set", self.inner, "up")
        return self

    @property
    def wrapper(self) -> tuple[str, ...]:
        """Run a command inside: `ip netns exec` joins the namespace and execs it (same pid)."""
        return ("ip", "netns", "exec", self.ns)

    def cut(self) -> None:
        ip("-n", self.ns, "link", "set", self.inner, "down")

    def heal(self) -> None:
        ip("-n", self.ns, "link", "set", self.inner, "up")

    def close(self) -> None:
        if not self.opened:
            return
        ip("link", "del", self.outer, check=False)  # takes the peer with it
        ip("netns", "del", self.ns, check=False)
        self.opened = False
