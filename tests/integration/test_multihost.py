"""
Integration tests across hosts: real C{twistd p2pexec} nodes, each in a
network namespace of its own, joined by a bridge (see
L{tests.integration.netns}).

Nodes find each other by multicast across the bridge, or by static seeds;
tasks run on the host whose node took them; and a host whose link goes down
is declared dead by its master, its tasks run elsewhere, and it rejoins when
the link comes back.  These tests need root and C{ip netns}; without them
they are skipped, saying why.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Callable

from twisted.trial.unittest import SkipTest

from tests.integration.netns import NODE_PORT, HostCluster, netns_problem
from tests.integration.test_cluster import JOB_FINISHED, IntegrationTestCase, shell_quote, write_job_file


class MultiHostTestCase(IntegrationTestCase):
    """Skips every test at once where network namespaces cannot be made."""

    def setUp(self) -> None:
        problem = netns_problem()
        if problem is not None:
            raise SkipTest(problem)

    def assertConnectedAt(self, cluster: HostCluster, node: str, peer: str) -> None:
        """
        Assert that C{node} logged its connection to C{peer} at the address
        of C{peer}'s host and C{peer}'s port.
        """
        address = re.escape(cluster.host_of[peer].address)
        self.assertLogHas(cluster.nodes[node], rf"\] Node {node} connected to peer {peer} at {address}:{NODE_PORT} ")

    def start_kind_nodes(
        self,
        cluster: HostCluster,
        hosts: tuple[str, ...],
        kinds: tuple[str, ...],
        per_kind: int,
        options: Callable[[str], list[str]],
    ) -> tuple[dict[str, str], str]:
        """
        Write a job of C{per_kind} tasks of each of C{kinds}, each printing
        its node's name and its host's addresses, and start node nN on each
        host hN of C{hosts}, all at once, with C{options(label)}: n1 (runs
        nothing) as the job's master, each other nN running kind kN.

        @return: the node names by host label, and the results file.
        """
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        command = 'echo "$P2PEXEC_NODE"; hostname -I'
        tasks = [{"id": f"{kind}-{n}", "kind": kind, "command": command} for n in range(per_kind) for kind in kinds]
        write_job_file(job_file, {"shell": True, "timeout": 10}, tasks)
        names = {label: f"n{label[1:]}" for label in hosts}
        for label in hosts:
            extra = options(label)
            if label == "h1":
                extra += ["--capabilities", "none", "--job", job_file, "--results", results]
            else:
                extra += ["--capabilities", f"k{label[1:]}"]
            cluster.start(names[label], *extra, host=label, wait=False)
        return names, results

    def assertKindsRanAtHome(self, cluster: HostCluster, names: dict[str, str], results: str, total: int) -> None:
        """
        Assert that n1 finished its job of C{total} tasks, none failed, each
        task of kind kN ran on nN and printed nN's name and host hN's
        address; then stop every node and assert its log clean.
        """
        n1 = cluster.nodes["n1"]
        finished = n1.wait_for(JOB_FINISHED, timeout=20)
        self.assertEqual(finished.group(2, 3), (str(total), "0"), n1.log_tail())
        report = self.results_of(n1, results)
        for task in report["tasks"]:
            label = "h" + task["kind"][1:]
            self.assertEqual((task["status"], task["node"]), ("succeeded", names[label]), task)
            self.assertEqual(task["stdout"].split(), [names[label], cluster.network[label].address], task)
        self.stop_all(cluster)
        for node in cluster.nodes.values():
            self.assertLogClean(node)


class MulticastDiscoveryTests(MultiHostTestCase):
    """Nodes on three hosts find each other by multicast across the bridge."""

    def test_original_example_across_hosts(self) -> None:
        """
        The original example, with a1 (master of a1,a2,b1,c1,a3), b1 and c1
        on three hosts: every line of the original example appears, each
        node is connected to the others at their hosts' addresses, and the
        results file says b1 ran on b1 and c1 on c1.
        """
        cluster = HostCluster(self, 3)
        results = cluster.path("results.json")
        a1 = cluster.start("a1", "--tasks", "a1,a2,b1,c1,a3", "--results", results, "--slots", "2", host="h1")
        b1 = cluster.start("b1", "--slots", "2", host="h2")
        c1 = cluster.start("c1", "--slots", "2", host="h3")
        finished = a1.wait_for(JOB_FINISHED, timeout=20)
        self.assertEqual(finished.group(2, 3), ("5", "0"), a1.log_tail())

        self.assertOriginalExampleLines(cluster, a1, lambda node: NODE_PORT)
        for name in ("a1", "b1", "c1"):
            for other in ("a1", "b1", "c1"):
                if other != name:
                    cluster.nodes[name].wait_for(rf"\] Node {name} connected to peer {other} at ")
                    self.assertConnectedAt(cluster, name, other)
        for label in ("h1", "h2", "h3"):
            self.assertIn(cluster.group[0], cluster.network[label].multicast_groups(), label)
        self.assertFalse(b1.has(r"executing: (?!b1$)"), b1.log_tail())
        self.assertFalse(c1.has(r"executing: (?!c1$)"), c1.log_tail())

        report = self.results_of(a1, results)
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (5, 5, 0))
        expected = {"a1": "a1", "a2": "a1", "a3": "a1", "b1": "b1", "c1": "c1"}
        self.assertEqual({task["id"]: task["node"] for task in report["tasks"]}, expected)
        self.stop_all(cluster)
        for node in (a1, b1, c1):
            self.assertLogClean(node)

    def test_real_commands_run_on_their_hosts(self) -> None:
        """
        A job file of shell commands whose kinds only the nodes on h2 and h3
        run: each task prints the node that ran it, its host's addresses and
        its network namespace; the results file says each ran on the
        expected node, and the output that came back proves it ran on that
        node's host.
        """
        cluster = HostCluster(self, 3)
        results = cluster.path("results.json")
        job_file = cluster.path("job.toml")
        report_cmd = 'echo "node=$P2PEXEC_NODE task=$P2PEXEC_TASK_ID"; hostname -I; readlink /proc/self/ns/net'
        tasks = [{"id": f"{kind}-{n}", "kind": kind, "command": report_cmd} for n in range(3) for kind in ("k2", "k3")]
        tasks.append({"id": "k3-fails", "kind": "k3", "command": "echo on the way out >&2; exit 4"})
        write_job_file(job_file, {"shell": True, "timeout": 10}, tasks)
        m = cluster.start("m", "--capabilities", "none", "--job", job_file, "--results", results, host="h1")
        w2 = cluster.start("w2", "--capabilities", "k2", "--slots", "2", host="h2")
        w3 = cluster.start("w3", "--capabilities", "k3", "--slots", "2", host="h3")
        finished = m.wait_for(JOB_FINISHED, timeout=20)
        self.assertEqual(finished.group(2, 3), ("6", "1"), m.log_tail())
        self.assertConnectedAt(cluster, "m", "w2")
        self.assertConnectedAt(cluster, "m", "w3")

        netns_ids = {cluster.network[label].netns_id() for label in ("h1", "h2", "h3")}
        self.assertEqual(len(netns_ids), 3, "the hosts do not have network namespaces of their own")
        self.assertNotIn(os.readlink("/proc/self/ns/net"), netns_ids)

        report = self.results_of(m, results)
        expected = {"k2": ("w2", "h2"), "k3": ("w3", "h3")}
        for task in report["tasks"]:
            node, label = expected[task["kind"]]
            host = cluster.network[label]
            self.assertEqual((task["state"], task["node"]), ("done", node), task)
            if task["id"] == "k3-fails":
                self.assertEqual((task["status"], task["exit_code"]), ("failed", 4), task)
                self.assertEqual(task["stderr"], "on the way out\n", task)
                continue
            self.assertEqual((task["status"], task["exit_code"]), ("succeeded", 0), task)
            lines = task["stdout"].splitlines()
            self.assertEqual(len(lines), 3, task)
            self.assertEqual(lines[0], f"node={node} task={task['id']}", task)
            self.assertEqual(lines[1].split(), [host.address], task)
            self.assertEqual(lines[2], host.netns_id(), task)
        self.stop_all(cluster)
        for node in (m, w2, w3):
            self.assertLogClean(node)


class StaticSeedTests(MultiHostTestCase):
    """With multicast off, nodes meet through one seed each."""

    HOSTS = ("h1", "h2", "h3", "h4")
    SEEDS = {"h1": "h4", "h2": "h1", "h3": "h2", "h4": "h3"}

    def test_ring_of_seeds_forms_a_full_cluster(self) -> None:
        """
        Four hosts with --no-multicast, each node seeded with the next one's
        address only (a ring: h2 seeds h1, h3 seeds h2, h4 seeds h3, h1
        seeds h4): no host joins the multicast group, yet every node
        discovers and connects to every other at its host's address, and a
        job on n1 whose kinds only n3 (the far side of the ring) and n4 run
        completes there.
        """
        cluster = HostCluster(self, len(self.HOSTS))
        # All at once: in a ring, someone's seed is always not up yet.
        names, results = self.start_kind_nodes(
            cluster,
            self.HOSTS,
            ("k3", "k4"),
            4,
            lambda label: ["--no-multicast", "--peer", cluster.seed(self.SEEDS[label]), "--slots", "2"],
        )
        for node in cluster.nodes.values():
            self.assertEqual(node.port, NODE_PORT)

        for name in names.values():
            for other in names.values():
                if other != name:
                    cluster.nodes[name].wait_for(rf"\] Node {name} discovered peer {other}$", timeout=20)
                    cluster.nodes[name].wait_for(rf"\] Node {name} connected to peer {other} at ", timeout=20)
                    self.assertConnectedAt(cluster, name, other)
        for label in self.HOSTS:
            self.assertNotIn(cluster.group[0], cluster.network[label].multicast_groups(), label)

        self.assertKindsRanAtHome(cluster, names, results, 8)


class PartitionTests(MultiHostTestCase):
    """A host cut off from the others is declared dead, and rejoins when its link comes back."""

    HEARTBEAT = ("--heartbeat-interval", "0.5", "--heartbeat-timeout", "2.5")
    TASKS = 30
    DETECTION_LIMIT = 5.0
    """Seconds the master may take to give up on a silent worker: the 2.5 s timeout, and slack."""

    def start_partition_cluster(self, cluster, job_file, results, *options):
        """
        Workers w2 (host h2) and w3 (h3) for kind w, two slots each, then the
        master m (h1, runs nothing) of C{job_file}; all with C{HEARTBEAT}
        and C{options}.
        """
        w2 = cluster.start("w2", "--capabilities", "w", "--slots", "2", *self.HEARTBEAT, *options, host="h2")
        w3 = cluster.start("w3", "--capabilities", "w", "--slots", "2", *self.HEARTBEAT, *options, host="h3")
        m = cluster.start(
            "m", "--capabilities", "none", "--job", job_file, "--results", results, *self.HEARTBEAT, *options, host="h1"
        )
        return m, w2, w3

    LOST = r"\] Node m (?:declared peer w3 dead|lost its connection to peer w3)\b.*$"
    REQUEUED = r"\] Node m put (\d+) unconfirmed task\(s\) of job \S+ back in the queue: worker w3 "

    def test_partition_and_heal(self) -> None:
        """
        m on h1 is master of 30 tasks of kind w (0.3 s each); w2 on h2 and w3
        on h3 run them.  Once w3 has confirmed a task, h3's link goes down:
        m declares w3 dead within a few seconds, puts its unconfirmed tasks
        back in the queue, and they complete on w2.  When the link comes
        back, w3 rejoins (m connects to it again); whatever w3 still sends
        about its old attempts is dropped as stale.  The job ends with 30
        successes, each task once; a task ran twice only if it was cut off by
        the partition.
        """
        cluster = HostCluster(self, 3, budget=50)
        results = cluster.path("results.json")
        side = cluster.path("ran.txt")
        job_file = cluster.path("job.toml")
        record = f'echo "$P2PEXEC_TASK_ID $P2PEXEC_NODE $P2PEXEC_ATTEMPT" >> {shell_quote(side)}'
        ids = [f"t{n:02d}" for n in range(self.TASKS)]
        write_job_file(
            job_file,
            {"kind": "w", "shell": True, "timeout": 10},
            [{"id": task_id, "command": f"sleep 0.3; {record}; echo $P2PEXEC_TASK_ID"} for task_id in ids],
        )
        m, w2, w3 = self.start_partition_cluster(cluster, job_file, results)
        m.wait_for(r"\] Node m connected to peer w3 at ")
        m.wait_for(r"\] Master received confirmation for t\d+ from w3$")

        h3 = cluster.network["h3"]
        h3.link_down()
        cut = time.monotonic()
        confirmed_by_w3 = {
            match.group(1) for match in m.find_all(r"\] Master received confirmation for (t\d+) from w3$")
        }
        lost = m.wait_for(self.LOST, timeout=self.DETECTION_LIMIT + 1)
        detection = time.monotonic() - cut
        self.assertLess(detection, self.DETECTION_LIMIT, lost.group(0))
        requeued = m.wait_for(self.REQUEUED, timeout=2)
        self.assertGreaterEqual(int(requeued.group(1)), 1, m.log_tail())
        # Nothing can come from w3 while its link is down.
        confirmed_by_w3 = {
            match.group(1) for match in m.find_all(r"\] Master received confirmation for (t\d+) from w3$")
        }

        finished = m.wait_for(JOB_FINISHED, timeout=20)
        self.assertEqual(finished.group(2, 3), (str(self.TASKS), "0"), m.log_tail())
        report = self.results_of(m, results)
        self.assertEqual([task["id"] for task in report["tasks"]], ids)
        self.assertEqual((report["total"], report["succeeded"], report["failed"]), (self.TASKS, self.TASKS, 0))
        # The results were written while h3 was still cut off: nothing of
        # w3's reached m after the cut, so nothing was stale yet either (what
        # w3 sends once the link is back is checked below).
        self.assertEqual(report["stale_results_dropped"], 0, m.log_tail())
        for task in report["tasks"]:
            self.assertEqual(
                (task["state"], task["status"], task["stdout"]), ("done", "succeeded", task["id"] + "\n"), task
            )
            if task["node"] == "w3":
                self.assertIn(task["id"], confirmed_by_w3, f"m took a result of w3's while h3 was cut off: {task}")
            else:
                self.assertEqual(task["node"], "w2", task)
        rerun = {task["id"] for task in report["tasks"] if task["attempts"] > 1}
        self.assertTrue(rerun, "no task of w3's was run again on w2")
        for task_id in rerun:
            self.assertEqual(report["by_id"][task_id]["node"], "w2", report["by_id"][task_id])

        h3.link_up()
        m.wait_for(r"\] Node m connected to peer w3 at ", count=2, timeout=25)
        w3.wait_for(r"\] Node w3 connected to peer m at ", count=2, timeout=5)
        stale = m.find_all(r"\] Node m dropped a stale result for (t\d+) of job \S+ \(attempt \d+\) from w3: .+$")
        for match in stale:
            self.assertIn(match.group(1), rerun, match.group(0))

        with open(side) as f:
            runs = Counter(line.split()[0] for line in f)
        self.assertEqual(set(runs), set(ids))
        for task_id, count in runs.items():
            if count > 1:
                self.assertIn(task_id, rerun, f"{task_id} ran {count} times but was never re-assigned")
        self.stop_all(cluster)
        for node in (m, w2, w3):
            self.assertLogClean(node)

    def test_late_result_after_heal_is_dropped_as_stale(self) -> None:
        """
        w3's tasks hang (until the test releases them) on their first
        attempt.  h3's link goes down while w3 runs them: both m and w3
        declare each other dead, and the tasks run again on w2, where the
        job ends.  When the link comes back, m and w3 connect again; then the
        hung tasks are released, and the results w3 sends for those
        superseded attempts over the new connection are dropped as stale,
        one log line each.  No result of w3's is in the results file.

        With replication (the default), w3, cut off alone, tries to take the
        job over, but its pre-round (PRE_PROMISE) finds no majority, so it
        promises nothing and m stays master after the heal.
        """
        cluster = HostCluster(self, 3, budget=50)
        results = cluster.path("results.json")
        side = cluster.path("started.txt")
        release = cluster.path("release")
        job_file = cluster.path("job.toml")
        record = f'echo "$P2PEXEC_TASK_ID $P2PEXEC_NODE $P2PEXEC_ATTEMPT" >> {shell_quote(side)}'
        # Bounded: a hung task gives up after 25 s (and the hosts' processes are killed at clean-up).
        hang = (
            f'if [ "$P2PEXEC_NODE" = w3 ] && [ "$P2PEXEC_ATTEMPT" = 1 ]; then '
            f"for i in $(seq 250); do [ -e {shell_quote(release)} ] && break; sleep 0.1; done; fi"
        )
        ids = [f"t{n}" for n in range(8)]
        write_job_file(
            job_file,
            {"kind": "w", "shell": True, "timeout": 30},
            [{"id": task_id, "command": f"{record}; {hang}; sleep 0.1; echo $P2PEXEC_TASK_ID"} for task_id in ids],
        )
        m, w2, w3 = self.start_partition_cluster(cluster, job_file, results)
        w3.wait_for(r"\] Node w3 executing: t\d+$")

        h3 = cluster.network["h3"]
        h3.link_down()
        cut = time.monotonic()
        m.wait_for(r"\] Node m declared peer w3 dead: ", timeout=self.DETECTION_LIMIT + 1)
        w3.wait_for(r"\] Node w3 declared peer m dead: ", timeout=self.DETECTION_LIMIT + 1)
        self.assertLess(time.monotonic() - cut, self.DETECTION_LIMIT + 0.5)
        finished = m.wait_for(JOB_FINISHED, timeout=15)
        self.assertEqual(finished.group(2, 3), (str(len(ids)), "0"), m.log_tail())
        report = self.results_of(m, results)
        self.assertEqual({task["id"]: task["node"] for task in report["tasks"]}, {task_id: "w2" for task_id in ids})
        self.assertEqual(report["stale_results_dropped"], 0)

        with open(side) as f:
            hung = {line.split()[0] for line in f if line.split()[1:] == ["w3", "1"]}
        self.assertTrue(hung, "w3 started no task")
        for task_id in hung:
            self.assertGreaterEqual(report["by_id"][task_id]["attempts"], 2, report["by_id"][task_id])

        h3.link_up()
        m.wait_for(r"\] Node m connected to peer w3 at ", count=2, timeout=20)
        w3.wait_for(r"\] Node w3 connected to peer m at ", count=2, timeout=5)
        with open(release, "w"):
            pass
        for task_id in sorted(hung):
            m.wait_for(
                rf"\] Node m dropped a stale result for {task_id} of job \S+ \(attempt 1\) from w3: .+$", timeout=10
            )
        self.assertFalse(m.has(r"\] Master received confirmation for \S+ from w3$"), m.log_tail())
        self.assertFalse(w3.has(r"EXECUTION_CONFIRMATION to m failed"), w3.log_tail())
        self.stop_all(cluster)
        for node in (m, w2, w3):
            self.assertLogClean(node)
