"""CI runs the metric parity tests: without pycocoevalcap or Java they skip locally, but fail in CI."""

import shutil

import pytest
from conftest import missing_metric_tools, pytest_sessionstart


def test_ci_fails_instead_of_skipping_without_java_or_pycocoevalcap(monkeypatch):
    assert missing_metric_tools(which=lambda name: "/usr/bin/java", find_spec=lambda name: object()) == []
    missing = missing_metric_tools(which=lambda name: None, find_spec=lambda name: None)
    assert [m.split()[0] for m in missing] == ["pycocoevalcap", "java"]

    monkeypatch.setattr(shutil, "which", lambda name: None)  # a machine without java
    monkeypatch.delenv("CI", raising=False)
    pytest_sessionstart(session=None)  # locally: the parity tests skip, the session goes on
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.UsageError, match="missing java"):
        pytest_sessionstart(session=None)
