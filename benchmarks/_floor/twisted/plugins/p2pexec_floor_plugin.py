"""twistd p2pexec-floor: the bare node under W3 (see benchmarks/_floor/p2pexec_floor.py)."""

from twisted.application.service import ServiceMaker

floor = ServiceMaker("p2pexec-floor", "p2pexec_floor", "A bare twistd node: the floor under W3.", "p2pexec-floor")
