"""Tests for L{p2pexec.replicas}: rendezvous ranking, majorities, ballots."""

from twisted.trial.unittest import SynchronousTestCase

from p2pexec.replicas import Ballot, ReplicaSet, majority, rank_successors, rendezvous_score


class RankTests(SynchronousTestCase):
    """L{rank_successors} and L{ReplicaSet.choose}."""

    names = [f"n{i}" for i in range(10)]

    def test_same_inputs_same_successors(self) -> None:
        """Every node that knows the same live names picks the same successors, in any order of the names."""
        first = rank_successors("job-1", "n0", self.names, 2)
        second = rank_successors("job-1", "n0", reversed(self.names), 2)
        self.assertEqual(first, second)
        self.assertEqual(len(first), 2)
        self.assertNotIn("n0", first)

    def test_ranked_by_score(self) -> None:
        """Successors come highest rendezvous score first."""
        ranked = rank_successors("job-7", "n0", self.names, 9)
        scores = [rendezvous_score("job-7", name) for name in ranked]
        self.assertEqual(scores, sorted(scores, reverse=True))

    def test_jobs_spread_over_nodes(self) -> None:
        """Different jobs pick different first successors (no node is everyone's successor)."""
        firsts = {rank_successors(f"job-{n}", "n0", self.names, 1)[0] for n in range(200)}
        self.assertGreater(len(firsts), 5)

    def test_a_leaving_node_moves_only_its_jobs(self) -> None:
        """Removing one node changes the successors only of jobs that ranked it among theirs."""
        for n in range(100):
            job = f"job-{n}"
            before = rank_successors(job, "n0", self.names, 2)
            after = rank_successors(job, "n0", [name for name in self.names if name != "n5"], 2)
            if "n5" not in before:
                self.assertEqual(before, after, job)

    def test_fewer_live_nodes_than_asked(self) -> None:
        """With fewer live nodes than replicas, the set is what exists."""
        self.assertEqual(ReplicaSet.choose("j", "m", ["m", "a"], 2).members, ("m", "a"))
        self.assertEqual(ReplicaSet.choose("j", "m", ["m"], 2).members, ("m",))
        self.assertEqual(rank_successors("j", "m", ["m", "a", "b"], 0), ())

    def test_rank_skips_the_dead(self) -> None:
        """A successor's rank counts only the live successors before it."""
        replicas = ReplicaSet(("m", "a", "b"))
        self.assertEqual(replicas.rank("a"), 1)
        self.assertEqual(replicas.rank("b"), 2)
        self.assertEqual(replicas.rank("b", dead=["a"]), 1)
        self.assertIsNone(replicas.rank("m"))
        self.assertIsNone(replicas.rank("z"))
        self.assertEqual(replicas.successors_of("a"), ("m", "b"))


class MajorityTests(SynchronousTestCase):
    """L{majority}."""

    def test_majorities(self) -> None:
        """1 of 1, 2 of 2, 2 of 3, 3 of 4, 3 of 5."""
        self.assertEqual([majority(n) for n in range(1, 6)], [1, 2, 2, 3, 3])
        self.assertEqual(ReplicaSet(("a", "b", "c")).majority, 2)

    def test_empty_set_refused(self) -> None:
        """A set of no member has no majority."""
        self.assertRaises(ValueError, majority, 0)


class BallotTests(SynchronousTestCase):
    """L{Ballot}."""

    def test_order(self) -> None:
        """A higher epoch wins; within an epoch, the name orders two proposers."""
        self.assertLess(Ballot(1, "z"), Ballot(2, "a"))
        self.assertLess(Ballot(2, "a"), Ballot(2, "b"))
        self.assertEqual(Ballot(1, "m").successor("n"), Ballot(2, "n"))
        self.assertEqual(Ballot(3, "n").describe(), "epoch 3 (n)")
