"""The p2pexec test suite."""
