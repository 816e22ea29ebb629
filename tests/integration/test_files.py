"""
Integration tests of files that travel with tasks (issue 16): three real
C{twistd p2pexec} nodes on loopback, each with its own state directory (its
blob cache and its tasks' sandboxes are in it), a 50 MiB input sent with the
job and a 20 MiB output brought back, SHA-256 checked on both ends; a second
job with the same input moves no input bytes (read from the transfer
counters of C{p2pexec status --json}); a path leading out, an output over
C{--max-transfer} and an output that vanished each give one clear line.

These need the four parts of issue 16 (store, wire, model, node) merged.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from typing import Any

from tests.integration.cluster import Cluster
from tests.integration.test_cli import CliTestCase, write_job

MIB = 1024 * 1024
INPUT_SIZE = 50 * MIB
OUTPUT_SIZE = 20 * MIB


def sha256_of(path: str) -> str:
    """The hex SHA-256 of a file, read in pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def write_random(path: str, size: int) -> str:
    """Write C{size} random bytes to C{path}; their SHA-256."""
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 1 << 20))
            f.write(piece)
            left -= len(piece)
    return sha256_of(path)


class FilesTests(CliTestCase):
    """Inputs sent with a job, outputs brought back, through a three-node cluster."""

    def start_cluster(self, cluster: Cluster, *w2_options: str) -> tuple[Any, Any, Any]:
        """m1 (runs nothing), w1 and w2 (run kind sh); wait until m1 is connected to both."""
        m1 = cluster.start("m1", "--capabilities", "m", "--slots", "1")
        w1 = cluster.start("w1", "--capabilities", "sh", "--slots", "2")
        w2 = cluster.start("w2", "--capabilities", "sh", "--slots", "2", *w2_options)
        m1.wait_for(r"\] Node m1 connected to peer w1 ", timeout=15.0)
        m1.wait_for(r"\] Node m1 connected to peer w2 ", timeout=15.0)
        return m1, w1, w2

    def transfers(self, cluster: Cluster, port: int) -> dict[str, int]:
        """The transfer counters of the node on C{port}, from C{p2pexec status --json}."""
        status, out, err = self.cli(cluster, port, "status", "--json")
        self.assertEqual(status, 0, (out, err))
        figures: dict[str, int] = json.loads(out)["node"]["transfers"]
        return figures

    def results(self, cluster: Cluster, port: int, job: str) -> dict[str, dict[str, Any]]:
        """Each task of C{job} with its result, by id (C{p2pexec result --json})."""
        _, out, err = self.cli(cluster, port, "result", "--json", job)
        return {task["id"]: task for task in json.loads(out)["tasks"]}

    def test_input_and_output_through_three_nodes(self) -> None:
        """
        A 50 MiB input goes with the job to w1 (which is not the master),
        which hashes it; its 20 MiB output comes back to m1 and then to the
        client's --fetch folder; both hashes agree on both ends.  The same
        input in a second job moves no input bytes: the client sends nothing
        (m1 has it) and w1 fetches nothing (its cache has it).
        """
        cluster = Cluster(self, budget=150.0)
        m1, w1, _ = self.start_cluster(cluster)
        source = cluster.path("big.bin")
        input_sha = write_random(source, INPUT_SIZE)
        # The task hashes its input where it landed, writes a random output and hashes it: both ends can compare.
        script = (
            f"sha256sum big.bin | cut -d' ' -f1 > input.sha && "
            f"mkdir -p out && head -c {OUTPUT_SIZE} /dev/urandom > out/result.bin && "
            f"sha256sum out/result.bin | cut -d' ' -f1 > out/result.sha"
        )
        job_file = cluster.path("job.toml")
        task = {"id": "t1", "node": "w1", "shell": True, "command": script, "inputs": ["big.bin"]}
        task["outputs"] = ["out/*", "input.sha"]
        write_job(job_file, {"kind": "sh"}, [task])

        fetched = cluster.path("fetched")
        status, out, err = self.cli(cluster, m1.port, "submit", "--wait", "--fetch", fetched, job_file, timeout=90.0)
        self.assertEqual(status, 0, (out, err, cluster.logs()))
        job = out.splitlines()[0]
        folder = os.path.join(fetched, job, "t1")
        self.assertEqual(open(os.path.join(folder, "input.sha")).read().strip(), input_sha)
        output = os.path.join(folder, "out", "result.bin")
        self.assertEqual(os.path.getsize(output), OUTPUT_SIZE)
        self.assertEqual(sha256_of(output), open(os.path.join(folder, "out", "result.sha")).read().strip())
        recorded = {o["path"]: o for o in self.results(cluster, m1.port, job)["t1"]["outputs"]}
        self.assertEqual(recorded["out/result.bin"]["sha256"], sha256_of(output))
        self.assertEqual(recorded["out/result.bin"]["size"], OUTPUT_SIZE)

        on_m1, on_w1 = self.transfers(cluster, m1.port), self.transfers(cluster, w1.port)
        self.assertEqual(on_w1["inputs_fetched_bytes"], INPUT_SIZE)
        self.assertGreaterEqual(on_m1["received_bytes"], INPUT_SIZE + OUTPUT_SIZE)

        job_file2 = cluster.path("job2.toml")
        write_job(job_file2, {"kind": "sh"}, [dict(task, id="t2")])
        status, out, err = self.cli(cluster, m1.port, "submit", "--wait", job_file2, timeout=60.0)
        self.assertEqual(status, 0, (out, err, cluster.logs()))
        again_m1, again_w1 = self.transfers(cluster, m1.port), self.transfers(cluster, w1.port)
        # No input byte moved: w1 fetched nothing; m1 took only the new (random) outputs.
        self.assertEqual(again_w1["inputs_fetched_bytes"], INPUT_SIZE)
        self.assertEqual(again_w1["inputs_cached"], on_w1["inputs_cached"] + 1)
        # Exactly the second run's new files: out/result.bin and its 65-byte out/result.sha
        # (input.sha is the same as the first run's, which m1 holds already).
        moved = again_m1["received_bytes"] - on_m1["received_bytes"]
        self.assertEqual(moved, OUTPUT_SIZE + 65)

    def test_refusals_are_one_clear_line(self) -> None:
        """
        An output that is a symlink leading out of the sandbox, an output
        over w2's --max-transfer, and a declared output that vanished before
        the task ended: each task fails with one line naming the file; the
        nodes keep serving.  An output glob that climbs out is refused at
        submission, in one line.
        """
        cluster = Cluster(self, budget=60.0)
        m1, _, w2 = self.start_cluster(cluster, "--max-transfer", "1M")
        job_file = cluster.path("bad.toml")
        tasks = [
            {
                "id": "escape",
                "node": "w1",
                "shell": True,
                "command": "ln -s /etc/hostname leak.txt",
                "outputs": ["leak.txt"],
            },
            {
                "id": "big",
                "node": "w2",
                "shell": True,
                "command": "head -c 2097152 /dev/zero > big.bin",
                "outputs": ["big.bin"],
            },
            {
                "id": "gone",
                "node": "w1",
                "shell": True,
                "command": "echo x > gone.txt && rm gone.txt",
                "outputs": ["gone.txt"],
            },
        ]
        write_job(job_file, {"kind": "sh"}, tasks)
        status, out, err = self.cli(cluster, m1.port, "submit", "--wait", job_file, timeout=30.0)
        self.assertEqual(status, 1, (out, err, cluster.logs()))
        job = out.splitlines()[0]
        results = self.results(cluster, m1.port, job)
        for task_id, names in (("escape", "leak.txt"), ("big", "big.bin"), ("gone", "gone.txt")):
            error = results[task_id]["error"] or ""
            self.assertEqual(results[task_id]["status"], "failed", (task_id, results[task_id]))
            self.assertIn(names, error)
            self.assertEqual(len(error.splitlines()), 1, error)
        self.assertIn("matched no file", results["gone"]["error"])
        self.assertIn("max-transfer", results["big"]["error"].replace("max_transfer", "max-transfer"))

        climbing = cluster.path("climb.toml")
        write_job(climbing, {"kind": "sh"}, [{"id": "c", "command": ["true"], "outputs": ["../x"]}])
        status, out, err = self.cli(cluster, m1.port, "submit", climbing)
        self.assertEqual(status, 2, (out, err))
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("../x", err)
        self.assertTrue(w2.running() and m1.running())

    def test_start_up_job_sends_its_inputs(self) -> None:
        """
        A node given a job file (C{--job}) whose task names an input on that
        node's disk takes the file into its own store, and its worker (another
        node) fetches it from there: the task sees the same bytes, and w1's
        result records the output with its SHA-256.
        """
        cluster = Cluster(self, budget=60.0)
        source = cluster.path("data.bin")
        input_sha = write_random(source, 3 * MIB)
        job_file = cluster.path("startup.toml")
        task = {
            "id": "t1",
            "shell": True,
            "command": "sha256sum data.bin | cut -d' ' -f1 > seen.sha",
            "inputs": ["data.bin"],
            "outputs": ["seen.sha"],
        }
        write_job(job_file, {"kind": "sh"}, [task])
        m1 = cluster.start("m1", "--capabilities", "m", "--job", job_file, "--replicas", "0")
        w1 = cluster.start("w1", "--capabilities", "sh")
        finished = m1.wait_for(r"\] Job (\S+) finished: (\d+) succeeded, (\d+) failed, [\d.]+s elapsed$", timeout=30.0)
        self.assertEqual(finished.group(2, 3), ("1", "0"), cluster.logs())
        w1.wait_for(r"\] Node w1 fetched input data\.bin \(3,145,728 bytes, sha256 \S+\) from m1 in ")
        fetched = cluster.path("fetched")
        status, out, err = self.cli(cluster, m1.port, "fetch", finished.group(1), "--into", fetched)
        self.assertEqual(status, 0, (out, err, cluster.logs()))
        with open(os.path.join(fetched, finished.group(1), "t1", "seen.sha")) as f:
            self.assertEqual(f.read().strip(), input_sha)


class FilesFailoverTests(CliTestCase):
    """A job's input that only its master had survives the master's SIGKILL: a replica has it."""

    def test_input_fetched_from_a_replica_after_the_master_is_killed(self) -> None:
        """
        m1 (runs nothing), w1 and w2, all C{--replicas 2}: a job of two
        tasks, t1 (sleeps) and t2 (after t1) whose 4 MiB input the client
        sent to m1 only.  m1 copies the input to w1 and w2 (one line each),
        then is SIGKILLed before any worker fetched it.  A successor takes
        the job over; t2 runs on a worker that has the input as a replica
        (or fetches it from the other), and the task sees the same bytes:
        the job ends with 2 succeeded.  (Before files were copied to the
        replicas, t2 ended in error: nobody alive had its input.)
        """
        cluster = Cluster(self, budget=120.0)
        m1 = cluster.start("m1", "--capabilities", "m", "--replicas", "2")
        workers = [cluster.start(name, "--capabilities", "sh", "--replicas", "2") for name in ("w1", "w2")]
        for name in ("w1", "w2"):
            m1.wait_for(rf"\] Node m1 connected to peer {name} ", timeout=15.0)
        workers[0].wait_for(r"\] Node w1 connected to peer w2 ", timeout=15.0)
        source = cluster.path("data.bin")
        input_sha = write_random(source, 4 * MIB)
        job_file = cluster.path("job.toml")
        tasks = [
            {"id": "t1", "shell": True, "command": "sleep 4"},
            {
                "id": "t2",
                "shell": True,
                "after": ["t1"],
                "command": "sha256sum data.bin | cut -d' ' -f1 > seen.sha",
                "inputs": ["data.bin"],
                "outputs": ["seen.sha"],
            },
        ]
        write_job(job_file, {"kind": "sh"}, tasks)
        status, out, err = self.cli(cluster, m1.port, "submit", job_file)
        self.assertEqual(status, 0, (out, err))
        job = out.strip()
        for name in ("w1", "w2"):
            m1.wait_for(
                rf"\] Node m1 copied job {job}'s 1 input file\(s\) \(4,194,304 bytes\) to replica {name} in ",
                timeout=20.0,
            )
        self.assertFalse(any(w.has(r"fetched input data\.bin") for w in workers), "a worker fetched it already")
        m1.send_signal(signal.SIGKILL)
        self.assertEqual(m1.wait_exit(5), -signal.SIGKILL)

        took = rf"\] Node (w\d) took over job {job} as master at epoch 2: "
        cluster.wait_until(
            lambda: any(w.has(took) for w in workers), lambda: f"nobody took the job over\n{cluster.logs()}"
        )
        [leader] = [w for w in workers if w.has(took)]
        finished = leader.wait_for(rf"\] Job {job} finished: (\d+) succeeded, (\d+) failed, ", timeout=40.0)
        self.assertEqual(finished.group(1, 2), ("2", "0"), cluster.logs())
        # The worker of t2 is a replica itself (three nodes): it found the input in its own cache, or
        # fetched it from the other replica; never from m1, which was dead before t2 could start.
        used = [json.loads(self.cli(cluster, w.port, "status", "--json")[1])["node"]["transfers"] for w in workers]
        self.assertEqual(sum(u["inputs_cached"] + u["inputs_fetched"] for u in used), 1, used)
        self.assertFalse(any(w.has(r"fetched input data\.bin .* from m1 ") for w in workers), cluster.logs())
        fetched = cluster.path("fetched")
        status, out, err = self.cli(cluster, leader.port, "fetch", job, "--into", fetched)
        self.assertEqual(status, 0, (out, err, cluster.logs()))
        with open(os.path.join(fetched, job, "t2", "seen.sha")) as f:
            self.assertEqual(f.read().strip(), input_sha)
