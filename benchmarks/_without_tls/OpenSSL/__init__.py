"""
Stands in for pyOpenSSL in benchmark nodes that do not use TLS.

p2pexec installs without pyOpenSSL by default (TLS is the C{tls} extra),
but the project's virtualenv has it for the TLS tests, and with it
twisted.protocols.amp imports OpenSSL at start-up (about 90 ms).  Putting
this folder first on a node's PYTHONPATH makes that import fail as it does
in a default install, so the benchmarks measure what users run.
"""

raise ImportError("pyOpenSSL is hidden from this benchmark node (a default p2pexec install has none)")
