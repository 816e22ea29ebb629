"""
Test helpers that ship with p2pexec, so that users can test against them too.
"""
