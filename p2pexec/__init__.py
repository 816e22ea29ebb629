"""
p2pexec: a peer-to-peer task farm on Twisted.

Nodes find each other by multicast, connect over AMP, and run the tasks that
any node (the master of a job) hands them, by capability.
"""

__version__ = "0.1.0"
