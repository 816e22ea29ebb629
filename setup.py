"""Packaging for p2pexec; the metadata lives in setup.cfg."""

from setuptools import setup

setup()
