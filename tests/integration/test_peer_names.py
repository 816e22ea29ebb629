"""
Integration test of seeds given by name across hosts: three real nodes, each
in a network namespace of its own (L{tests.integration.netns}), multicast
off, each started with C{--peer cluster.test:PORT} where C{cluster.test} is
listed, in each namespace's own C{/etc/netns/NS/hosts} (which C{ip netns
exec} mounts over C{/etc/hosts}), with all three hosts' addresses.  Needs
root and C{ip netns}; skipped, saying why, without them.
"""

from __future__ import annotations

import os
import re

from tests.integration.netns import NODE_PORT, HostCluster
from tests.integration.test_multihost import MultiHostTestCase

NAME = "cluster.test"
NETNS_ETC = "/etc/netns"


def give_hosts_file(testcase: MultiHostTestCase, namespace: str, addresses: list[str]) -> None:
    """
    Write C{/etc/netns/NAMESPACE/hosts} listing C{addresses} under L{NAME};
    remove it (and the folders made for it, if left empty) at clean-up.
    """
    made_root = not os.path.isdir(NETNS_ETC)
    folder = os.path.join(NETNS_ETC, namespace)
    os.makedirs(folder, exist_ok=False)

    def remove() -> None:
        path = os.path.join(folder, "hosts")
        if os.path.exists(path):
            os.remove(path)
        os.rmdir(folder)
        if made_root:
            try:
                os.rmdir(NETNS_ETC)
            except OSError:
                pass  # another test's files are in it now

    testcase.addCleanup(remove)
    lines = ["127.0.0.1 localhost"] + [f"{address} {NAME}" for address in addresses]
    with open(os.path.join(folder, "hosts"), "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")


class PeerByNameTests(MultiHostTestCase):
    """With multicast off, nodes meet through one name that lists them all."""

    HOSTS = ("h1", "h2", "h3")

    def test_three_nodes_meet_through_one_name(self) -> None:
        """
        Three hosts, each node started with only --peer cluster.test:PORT
        and --no-multicast: each resolves the name to the three addresses,
        dials the two others (not itself: no refusal is logged), every node
        connects to every other at its host's address, no host joins the
        multicast group, and a job on n1 whose kinds only n2 and n3 run
        completes there.
        """
        cluster = HostCluster(self, len(self.HOSTS))
        addresses = [cluster.network[label].address for label in self.HOSTS]
        for label in self.HOSTS:
            give_hosts_file(self, cluster.network[label].namespace, addresses)
        names, results = self.start_kind_nodes(
            cluster,
            self.HOSTS,
            ("k2", "k3"),
            3,
            lambda label: ["--no-multicast", "--peer", f"{NAME}:{NODE_PORT}", "--peer-refresh", "2"],
        )

        listed = ", ".join(re.escape(address) for address in sorted(addresses))
        for name in names.values():
            node = cluster.nodes[name]
            node.wait_for(rf"\] Node {name}: {re.escape(NAME)}:{NODE_PORT} resolves to {listed}$", timeout=20)
            for other in names.values():
                if other != name:
                    node.wait_for(rf"\] Node {name} connected to peer {other} at ", timeout=20)
                    self.assertConnectedAt(cluster, name, other)
        for label in self.HOSTS:
            self.assertNotIn(cluster.group[0], cluster.network[label].multicast_groups(), label)

        self.assertKindsRanAtHome(cluster, names, results, 6)
        for node in cluster.nodes.values():
            self.assertNotIn("refused our connection", node.log_text())
            self.assertNotIn("could not resolve", node.log_text())
