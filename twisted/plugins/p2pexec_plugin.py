"""The twistd plugin: C{twistd -n p2pexec --name a1 --port 10001 --tasks a1,a2,b1}."""

from twisted.application.service import ServiceMaker

p2pexec = ServiceMaker(
    "p2pexec",
    "p2pexec.tap",
    "A peer-to-peer task farm node: zero-config discovery, capability scheduling.",
    "p2pexec",
)
