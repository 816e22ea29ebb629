"""
TLS for the AMP connections (C{--tls}), through Twisted's TLS support
(pyOpenSSL).

Two ways to trust a peer:

  - **pinned** (C{--tls} with C{--key-file}): each node makes a self-signed
    certificate once (kept in its state directory).  TLS encrypts; who is
    at the other end is proved by the cluster key's challenge-response,
    whose proofs include the SHA-256 fingerprint of the certificate the
    acceptor presented.  A man in the middle presents its own certificate,
    so the proofs it relays do not match, and the connection is refused;
  - **operator certificates** (C{--tls-cert}, C{--tls-key}, C{--tls-ca}):
    mutual TLS, both sides presenting a certificate signed by the given CA.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from twisted.internet import ssl

IDENTITY_FILE = "tls.pem"


class TLSError(ValueError):
    """The TLS files cannot be used; the message says which and why."""


def load_or_create_identity(state_dir: str, name: str) -> ssl.PrivateCertificate:
    """
    This node's self-signed certificate and key, made on first use and kept
    in C{state_dir} (mode 0600).
    """
    path = os.path.join(state_dir, IDENTITY_FILE)
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                return ssl.PrivateCertificate.loadPEM(f.read())
        except Exception as e:
            raise TLSError(f"{path}: not a certificate and key ({e}); move it away to make a new one") from None
    from OpenSSL import crypto

    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    key = ssl.KeyPair.generate(size=2048)
    identity = key.selfSignedCert(int.from_bytes(os.urandom(8), "big"), CN=f"p2pexec node {name}")
    # Written whole or not at all: a temporary file, on disk, then renamed.
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key.dump(crypto.FILETYPE_PEM) + identity.dumpPEM())
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return identity


def load_operator_identity(cert: str, key: str, ca: str) -> tuple[ssl.PrivateCertificate, ssl.Certificate]:
    """The node's certificate and key, and the CA, from the operator's PEM files."""
    try:
        with open(cert, "rb") as f:
            cert_pem = f.read()
        with open(key, "rb") as f:
            key_pem = f.read()
        with open(ca, "rb") as f:
            authority = ssl.Certificate.loadPEM(f.read())
        return ssl.PrivateCertificate.loadPEM(cert_pem + key_pem), authority
    except OSError as e:
        raise TLSError(f"{e.filename}: {e.strerror}") from None
    except Exception as e:
        raise TLSError(f"--tls-cert/--tls-key/--tls-ca: not PEM certificates and key ({e})") from None


class TLSConfig:
    """
    What a node (or a client) needs to speak TLS: its options as a server
    and as a client, and the fingerprint it binds into its proofs.
    """

    def __init__(self, identity: ssl.PrivateCertificate | None, authority: ssl.Certificate | None) -> None:
        self.identity = identity
        self.authority = authority

    @property
    def pinned(self) -> bool:
        """Whether peers are trusted through the cluster key (not a CA)."""
        return self.authority is None

    def server_options(self) -> Any:
        """Context factory for the node's listening port."""
        assert self.identity is not None
        if self.authority is not None:
            return self.identity.options(self.authority)
        return self.identity.options()

    def client_options(self) -> Any:
        """Client context factory: checked by the CA, or (pinned) by the key's proofs."""
        if self.authority is not None:
            assert self.identity is not None
            return ssl.CertificateOptions(
                privateKey=self.identity.privateKey.original,
                certificate=self.identity.original,
                verify=True,
                caCerts=[self.authority.original],
                requireCertificate=True,
            )
        if self.identity is not None:
            return ssl.CertificateOptions(
                privateKey=self.identity.privateKey.original, certificate=self.identity.original, verify=False
            )
        return ssl.CertificateOptions(verify=False)

    def own_fingerprint(self) -> bytes:
        """The SHA-256 fingerprint of the certificate this node presents when it accepts."""
        assert self.identity is not None
        return fingerprint(self.identity.original)


def fingerprint(x509: Any) -> bytes:
    """The SHA-256 fingerprint of a pyOpenSSL certificate, as bytes."""
    return bytes.fromhex(x509.digest("sha256").decode("ascii").replace(":", ""))


def peer_fingerprint(transport: Any) -> bytes:
    """The fingerprint of the certificate the other end of a TLS C{transport} presented (empty if none)."""
    certificate = transport.getPeerCertificate() if hasattr(transport, "getPeerCertificate") else None
    return fingerprint(certificate) if certificate is not None else b""
