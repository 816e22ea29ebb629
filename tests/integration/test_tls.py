"""
TLS on the AMP connections (C{--tls}), with real nodes on loopback: the
port speaks TLS, a cluster with self-signed certificates pinned through its
key runs a job, and a man in the middle with a certificate of its own is
refused.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from typing import Any

from p2pexec.auth import generate_key
from p2pexec.tls import load_or_create_identity
from tests.integration.cluster import Cluster
from tests.integration.test_cluster import JOB_FINISHED, IntegrationTestCase


def key_file(folder: str) -> str:
    """A new cluster key file in C{folder}, mode 0600."""
    path = os.path.join(folder, "cluster.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(generate_key() + "\n")
    return path


class TlsProxy:
    """
    A man in the middle on 127.0.0.1: it accepts TLS with a certificate of
    its own and relays the bytes, over TLS, to the real node.
    """

    def __init__(self, folder: str, target_port: int) -> None:
        identity = load_or_create_identity(os.path.join(folder, "mitm"), "mitm")
        pem = os.path.join(folder, "mitm.pem")
        from OpenSSL import crypto

        with open(pem, "wb") as f:
            f.write(identity.dumpPEM() + crypto.dump_privatekey(crypto.FILETYPE_PEM, identity.privateKey.original))
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_context.load_cert_chain(pem)
        self.client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_context.check_hostname = False
        self.client_context.verify_mode = ssl.CERT_NONE
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.5)
        self.port = self.listener.getsockname()[1]
        self.relayed = 0
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            try:
                inbound = self.server_context.wrap_socket(raw, server_side=True)
                outbound = self.client_context.wrap_socket(socket.create_connection(("127.0.0.1", self.target_port), 5))
            except (OSError, ssl.SSLError):
                raw.close()
                continue
            self._sockets += [inbound, outbound]
            self.relayed += 1
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: Any, sink: Any) -> None:
        try:
            while not self._stop.is_set():
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        for end in (source, sink):
            try:
                end.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop relaying and close every socket."""
        self._stop.set()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


class TlsTests(IntegrationTestCase):
    """Two nodes with --tls and a cluster key."""

    def test_tls_cluster_runs_a_job_over_tls(self) -> None:
        """The AMP port speaks TLS with the node's own certificate, and a job crosses the cluster."""
        cluster = Cluster(self)
        key = key_file(cluster.folder)
        a1 = cluster.start("a1", "--key-file", key, "--tls", "--tasks", "a1,b1,b2")
        b1 = cluster.start("b1", "--key-file", key, "--tls")
        finished = a1.wait_for(JOB_FINISHED, timeout=20)
        self.assertEqual(finished.group(2, 3), ("3", "0"), a1.log_tail())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", a1.port), 5) as raw:
            with context.wrap_socket(raw) as tls:
                certificate = tls.getpeercert(binary_form=True)
        from OpenSSL import crypto

        subject = crypto.load_certificate(crypto.FILETYPE_ASN1, certificate).get_subject().CN
        self.assertEqual(subject, "p2pexec node a1")
        for node in (a1, b1):
            self.assertLogClean(node)

    def test_man_in_the_middle_is_refused(self) -> None:
        """
        b1 is sent to a1 through a proxy that terminates TLS with its own
        certificate: the cluster key's proofs carry the certificate's
        fingerprint, so they do not match, and b1 refuses the connection.
        """
        cluster = Cluster(self)
        key = key_file(cluster.folder)
        a1 = cluster.start("a1", "--key-file", key, "--tls", "--no-multicast")
        proxy = TlsProxy(cluster.folder, a1.port)
        self.addCleanup(proxy.close)
        b1 = cluster.start("b1", "--key-file", key, "--tls", "--no-multicast", "--peer", f"127.0.0.1:{proxy.port}")
        b1.wait_for(r"Refused the connection from 127\.0\.0\.1:\d+: it does not hold the cluster key")
        self.assertGreater(proxy.relayed, 0, "b1 never went through the proxy: the test proves nothing")
        self.assertFalse(b1.has(r"connected to peer a1"), b1.log_tail())
        self.assertFalse(a1.has(r"connected to peer b1"), a1.log_tail())
