"""CI runs the metric parity tests: without pycocoevalcap or Java they skip locally, but fail in CI."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import missing_metric_tools


def test_ci_fails_instead_of_skipping_without_java_or_pycocoevalcap(tmp_path):
    assert missing_metric_tools(which=lambda name: "/usr/bin/java", find_spec=lambda name: object()) == []
    missing = missing_metric_tools(which=lambda name: None, find_spec=lambda name: None)
    assert [m.split()[0] for m in missing] == ["pycocoevalcap", "java"]
    # The whole session stops with an error when CI is set and java is missing.
    env = {**os.environ, "CI": "1", "PATH": str(tmp_path)}  # a PATH without java
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co",
                             str(Path(__file__).parent / "test_pixel_shuffle.py")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "missing java" in result.stdout + result.stderr
