"""
pytest glue.  The suite is written as trial TestCases; under trial each test
runs inside C{_trial_temp}, so C{TestCase.mktemp()} paths are relative to it.
Under pytest the working folder would be the checkout, so every test is moved
into a temporary folder of its own instead.
"""

import pytest


@pytest.fixture(autouse=True)
def _run_in_temporary_folder(tmp_path, monkeypatch):
    """Run each test with a fresh temporary working folder."""
    monkeypatch.chdir(tmp_path)
