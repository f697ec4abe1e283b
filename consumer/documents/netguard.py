"""Which network addresses an untrusted URL may make the consumer connect to.

A request can name any URL, so without a guard it could make the consumer read cloud
metadata (169.254.169.254), admin ports on loopback or services inside the cluster (SSRF).
Only globally routable unicast addresses pass unless the deployment opts in.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Final

from consumer.errors import OcrError
from schemas.common import ErrorCode

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# NAT64 prefixes (RFC 6052, RFC 8215): a NAT64 gateway forwards to the embedded IPv4 address,
# so 64:ff9b::a00:1 is 10.0.0.1 in disguise.
_NAT64: Final = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)


def _translated_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 destination of an IPv4-mapped or NAT64 address: the real peer."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _tunnel_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 endpoints a 6to4 or Teredo address routes through."""
    embedded: list[ipaddress.IPv4Address] = []
    if address.sixtofour is not None:
        embedded.append(address.sixtofour)
    if address.teredo is not None:
        embedded.extend(address.teredo)
    return embedded


def _own_refusal(address: IPAddress) -> str | None:
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why the consumer must not connect to `address`, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        # Judge translated addresses by where the packets end up: Python files the whole
        # ::ffff:0:0/96 and 64:ff9b::/96 ranges as reserved, public destinations included.
        translated = _translated_ipv4(address)
        if translated is not None:
            inner_reason = _own_refusal(translated)
            if inner_reason is None:
                return None
            return f"an IPv6 address standing for {translated}, {inner_reason}"
    reason = _own_refusal(address)
    if reason is not None:
        return reason
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _tunnel_ipv4(address):
            inner_reason = _own_refusal(inner)
            if inner_reason is not None:
                return f"an IPv6 address tunnelling to {inner}, {inner_reason}"
    return None


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in resolver order, without duplicates.

    getaddrinfo also parses numeric forms (2130706433, 0x7f.1, [::ffff:7f00:1]) exactly as
    the connection would, so the check and the connection cannot disagree about them.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonical, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def checked_addresses(
    host: str, port: int, *, allow_private: bool, shown_url: str
) -> list[IPAddress]:
    """Resolve `host` and return the addresses the consumer may connect to.

    Refuses the host when any answer is non-public: a resolver under an attacker's control
    can mix answers, and refusing the whole name keeps the rule simple to reason about.
    """
    try:
        literal = _ip_literal(host)
        addresses = [literal] if literal is not None else await resolve_host(host, port)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"cannot resolve the host of {shown_url} ({exc}); check the URL's host name",
        ) from None
    if not addresses:
        raise OcrError(
            ErrorCode.SOURCE_FETCH_FAILED,
            f"the host of {shown_url} resolves to no address; check the URL's host name",
        )
    if allow_private:
        return addresses
    for address in addresses:
        reason = refusal_reason(address)
        if reason is not None:
            raise OcrError(
                ErrorCode.SOURCE_HOST_NOT_ALLOWED,
                f"{shown_url} resolves to {address}, {reason}; the consumer only fetches "
                "from public addresses: publish the document at a public URL, put it under a "
                "file root, or set OCR_ALLOW_PRIVATE_NETWORKS=true in a trusted deployment",
            )
    return addresses
