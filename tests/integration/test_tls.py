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
from tests.integration.test_cli import CliTestCase
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
            except (TimeoutError, OSError):
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
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        subject = x509.load_der_x509_certificate(certificate).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(subject[0].value, "p2pexec node a1")
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


def _certificate(subject: str, issuer: Any, public_key: Any, signing_key: Any, ca: bool) -> Any:
    """A certificate (cryptography's) for C{subject}, signed by C{signing_key} as C{issuer}."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(signing_key, hashes.SHA256())


def make_ca(folder: str, name: str) -> tuple[Any, Any]:
    """A new CA (certificate, key) called C{name}, written to C{folder}/C{name}-ca.pem."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _certificate(name, None, key.public_key(), key, ca=True)
    with open(os.path.join(folder, f"{name}-ca.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def make_node_cert(folder: str, ca: tuple[Any, Any], node: str) -> tuple[str, str]:
    """A certificate for C{node} signed by C{ca}: the paths of its PEM certificate and key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    ca_cert, ca_key = ca
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _certificate(node, ca_cert.subject, key.public_key(), ca_key, ca=False)
    cert_path, key_path = os.path.join(folder, f"{node}.crt"), os.path.join(folder, f"{node}.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


class OperatorCertificateTests(IntegrationTestCase):
    """Mutual TLS with certificates from the operator's CA (--tls-cert, --tls-key, --tls-ca)."""

    def test_nodes_of_the_ca_meet_others_do_not(self) -> None:
        """Two nodes with certificates of the CA run a job; a node whose certificate another CA signed never connects."""
        cluster = Cluster(self)
        folder = cluster.folder
        ca, rogue_ca = make_ca(folder, "cluster"), make_ca(folder, "rogue")
        ca_path = os.path.join(folder, "cluster-ca.pem")

        def tls(node: str, authority: tuple[Any, Any], ca_file: str) -> list[str]:
            cert, key = make_node_cert(folder, authority, node)
            return ["--tls", "--tls-cert", cert, "--tls-key", key, "--tls-ca", ca_file]

        a1 = cluster.start("a1", *tls("a1", ca, ca_path), "--tasks", "a1,b1,c1")
        b1 = cluster.start("b1", *tls("b1", ca, ca_path))
        c1 = cluster.start("c1", *tls("c1", rogue_ca, ca_path))
        a1.wait_for(r"\] Master received confirmation for b1 from b1$", timeout=20)
        cluster.wait_until(
            lambda: a1.has(r"Node a1 has 1 task\(s\) of kind 'c' waiting"),
            lambda: f"a1 never said kind c waits\n{cluster.logs()}",
        )
        self.assertFalse(a1.has(r"connected to peer c1"), a1.log_tail())
        self.assertFalse(c1.has(r"connected to peer"), c1.log_tail())
        self.assertLogClean(b1)


class ClientTlsTests(CliTestCase):
    """The client against a node that asks for the operator's client certificates."""

    def test_client_against_operator_certificates_says_why_in_one_line(self) -> None:
        """
        C{p2pexec --tls} has no client certificate: against a node given
        --tls-cert/--tls-key/--tls-ca the handshake fails, and the client
        says so in one line (status 2, no traceback), naming the address.
        """
        cluster = Cluster(self)
        folder = cluster.folder
        key = key_file(folder)
        cert, private = make_node_cert(folder, make_ca(folder, "cluster"), "a1")
        a1 = cluster.start(
            "a1",
            "--key-file",
            key,
            "--tls",
            "--tls-cert",
            cert,
            "--tls-key",
            private,
            "--tls-ca",
            os.path.join(folder, "cluster-ca.pem"),
        )
        self.assertOneLineError(
            self.cli(cluster, a1.port, "--tls", "--key-file", key, "status"),
            f"the TLS handshake with 127.0.0.1:{a1.port} failed",
            "not ones given --tls-cert",
        )
