"""
Seeds given by name (L{p2pexec.peer_names}): whole nodes on a L{FakeNetwork},
with a resolver the test controls.
"""

import random

from twisted.internet.defer import fail, succeed
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2pexec.model import TaskSpec
from p2pexec.node import NodeConfig, create_node
from p2pexec.peer_names import is_address
from p2pexec.testing.network import FakeNetwork
from p2pexec.testing.runner import FakeRunner

NAME = "cluster.test"
PORT = 3000


def text(event):
    """The formatted message of a log event."""
    return event["log_format"].format(**event)


def complaints(events):
    """
    The warnings and errors among C{events} about dialling and resolving
    (not those about tasks, such as a task waiting for its worker to connect,
    or put back when two nodes dialled each other at once).
    """
    words = ("resolve", "seed", "refused", "itself", "connecting")
    return [text(e) for e in events if e["log_level"] >= LogLevel.warn and any(w in text(e).lower() for w in words)]


class FakeResolver:
    """
    Answers each name with the addresses in C{answers}, or fails with the
    exception there; counts the questions.
    """

    def __init__(self, answers=None):
        self.answers = dict(answers or {})
        self.asked = []

    def __call__(self, name):
        self.asked.append(name)
        answer = self.answers.get(name, LookupError("Name or service not known"))
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(list(answer))


class NamedCluster:
    """Nodes with multicast off, one host each, at 127.0.0.N:PORT, sharing one L{FakeResolver}."""

    def __init__(self, answers=None):
        self.network = FakeNetwork()
        self.resolver = FakeResolver(answers)
        self.nodes = {}
        self._rng = random.Random(0)

    def add(self, name, address, seeds=((NAME, PORT),), **config):
        """Start node C{name} listening at C{address}:PORT, seeded with C{seeds}."""
        config.setdefault("capabilities", frozenset({name.rstrip("0123456789")}))
        host = self.network.host(address)
        node = create_node(
            NodeConfig(name=name, interface=address, port=PORT, multicast=False, seeds=seeds, **config),
            host,
            FakeRunner(host, name, duration=0.1),
            rng=random.Random(self._rng.getrandbits(64)),
            resolve=self.resolver,
        )
        node.start()
        self.nodes[name] = node
        return node

    def connected(self, a, b):
        """Whether C{a} has a live, handshaken connection to C{b}."""
        return self.nodes[a].peers.is_connected(b)


ADDRESSES = {"a1": "127.0.0.1", "b1": "127.0.0.2", "c1": "127.0.0.3"}


class PeerNamesTests(SynchronousTestCase):
    """A --peer NAME:PORT seed dials every address NAME resolves to, and follows its changes."""

    def test_every_address_is_dialled_and_the_own_skipped(self):
        """
        Three nodes each seeded only with a name listing all three: each
        dials the two others' addresses and not its own, they all meet with
        no error logged, and a job crosses the cluster.
        """
        cluster = NamedCluster({NAME: sorted(ADDRESSES.values())})
        with capturedLogs() as events:
            for name, address in ADDRESSES.items():
                tasks = (TaskSpec.instruction("b1"), TaskSpec.instruction("c1")) if name == "a1" else None
                cluster.add(name, address, tasks=tasks)
            cluster.network.run(10.0)
        for a in ADDRESSES:
            for b in ADDRESSES:
                if a != b:
                    self.assertTrue(cluster.connected(a, b), (a, b))
        for name, address in ADDRESSES.items():
            dialer = cluster.nodes[name].dialer
            self.assertNotIn(f"seed {address}:{PORT}", dialer)
            others = [f"seed {other}:{PORT}" for other in ADDRESSES.values() if other != address]
            self.assertEqual([key for key in others if key in dialer], others, name)
        self.assertEqual(cluster.network.datagrams, [])
        self.assertEqual(complaints(events), [])
        self.assertEqual([text(e) for e in events if "itself" in text(e)], [], "a node dialled its own address")
        job = cluster.nodes["a1"].initial_job.result
        self.assertEqual({t: r.result.node for t, r in job.tasks.items()}, {"b1": "b1", "c1": "c1"})

    def test_refresh_picks_up_a_new_address(self):
        """
        A name that first lists only the node itself is resolved again every
        --peer-refresh seconds; once it lists b1 too, a1 dials b1.
        """
        cluster = NamedCluster({NAME: ["127.0.0.1"]})
        a1 = cluster.add("a1", "127.0.0.1", peer_refresh=10.0)
        cluster.add("b1", "127.0.0.2", seeds=())
        cluster.network.run(15.0)
        self.assertFalse(cluster.connected("a1", "b1"))
        self.assertEqual(cluster.resolver.asked, [NAME, NAME])
        cluster.resolver.answers[NAME] = ["127.0.0.1", "127.0.0.2"]
        cluster.network.run(4.0)
        self.assertFalse(cluster.connected("a1", "b1"), "resolved again before --peer-refresh seconds")
        cluster.network.run(2.0)
        self.assertTrue(cluster.connected("a1", "b1"))
        self.assertEqual(a1.peer_names.addresses(f"{NAME}:{PORT}"), ["127.0.0.1", "127.0.0.2"])

    def test_own_address_found_by_identity(self):
        """
        An address that is not the node's interface, but leads to the node
        itself (a NAT, a service address), is found to be the node by its
        own name and instance: it is dialled once, then never again, and
        nothing is logged as an error.
        """
        cluster = NamedCluster({NAME: ["10.9.9.9"]})
        with capturedLogs() as events:
            a1 = cluster.add("a1", "127.0.0.1", peer_refresh=5.0)
            cluster.network.alias("10.9.9.9", PORT, ("127.0.0.1", PORT))
            cluster.network.run(1.0)
            self.assertTrue(a1.dialer.is_own("10.9.9.9", PORT))
            self.assertNotIn(f"seed 10.9.9.9:{PORT}", a1.dialer)
            connections = len(cluster.network.pumps)
            cluster.network.run(60.0)
        self.assertEqual(len(cluster.network.pumps), connections, "the node dialled itself again")
        self.assertGreater(len(cluster.resolver.asked), 10)
        self.assertEqual(complaints(events), [])
        self.assertEqual(len([e for e in events if "is this node itself" in text(e)]), 1)

    def test_resolution_failure_logged_once_per_change(self):
        """
        A name that stops resolving is one warning, however many refreshes
        fail; the addresses of its last answer are still dialled and the node
        serves on; resolving again is one line, failing again one more warning.
        """
        cluster = NamedCluster({NAME: ["127.0.0.2"]})
        with capturedLogs() as events:
            cluster.add(
                "a1", "127.0.0.1", peer_refresh=1.0, capabilities=frozenset(), tasks=(TaskSpec.instruction("b1"),)
            )
            cluster.add("b1", "127.0.0.2", seeds=())
            cluster.network.run(2.0)
            self.assertTrue(cluster.connected("a1", "b1"))
            cluster.resolver.answers[NAME] = LookupError("Temporary failure in name resolution")
            cluster.network.run(20.0)
            self.assertIn(f"seed 127.0.0.2:{PORT}", cluster.nodes["a1"].dialer)
            cluster.resolver.answers[NAME] = []
            cluster.network.run(5.0)
            cluster.resolver.answers[NAME] = ["127.0.0.2"]
            cluster.network.run(5.0)
            cluster.resolver.answers[NAME] = LookupError("Name or service not known")
            cluster.network.run(5.0)
        warnings = [line for line in complaints(events) if "resolve" in line]
        self.assertEqual(len(warnings), 2, warnings)
        self.assertIn(f"could not resolve {NAME}:{PORT}: Temporary failure in name resolution", warnings[0])
        self.assertIn(f"could not resolve {NAME}:{PORT}: Name or service not known", warnings[1])
        self.assertEqual(len([e for e in events if "resolves again" in text(e)]), 1)
        self.assertGreater(len(cluster.resolver.asked), 30)
        self.assertTrue(cluster.connected("a1", "b1"))
        self.assertEqual(cluster.nodes["a1"].initial_job.result.tasks["b1"].result.node, "b1")

    def test_an_address_that_leaves_the_answer_is_not_dialled_again(self):
        """
        An address that leaves the answer loses its seed link, but the
        connection made through it stays (the failure detectors judge it).
        """
        cluster = NamedCluster({NAME: ["127.0.0.2", "127.0.0.3"]})
        a1 = cluster.add("a1", "127.0.0.1", peer_refresh=5.0)
        cluster.add("b1", "127.0.0.2", seeds=())
        cluster.add("c1", "127.0.0.3", seeds=())
        cluster.network.run(3.0)
        self.assertTrue(cluster.connected("a1", "c1"))
        cluster.resolver.answers[NAME] = ["127.0.0.2"]
        cluster.network.run(5.0)
        self.assertNotIn(f"seed 127.0.0.3:{PORT}", a1.dialer)
        self.assertIn(f"seed 127.0.0.2:{PORT}", a1.dialer)
        self.assertTrue(cluster.connected("a1", "c1"))

    def test_ip_literal_is_not_resolved(self):
        """A seed given by address is dialled as before: never resolved, no refresh, no name to follow."""
        cluster = NamedCluster()
        a1 = cluster.add("a1", "127.0.0.1", seeds=(("127.0.0.2", PORT),))
        cluster.add("b1", "127.0.0.2", seeds=())
        cluster.network.run(100.0)
        self.assertTrue(cluster.connected("a1", "b1"))
        self.assertEqual(cluster.resolver.asked, [])
        self.assertEqual(a1.peer_names.names, [])
        self.assertTrue(is_address("10.0.0.1"))
        self.assertFalse(is_address(NAME))
