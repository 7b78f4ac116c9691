"""What the package claims about itself matches what it is: the Python versions it runs on, its
licence, and the files an installed fsguard needs."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def metadata() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def claimed_minimum() -> tuple[int, int]:
    match = re.fullmatch(r">=\s*3\.(\d+)", metadata()["options"]["python_requires"].strip())
    assert match, "python_requires must be of the form >=3.N"
    return 3, int(match.group(1))


def test_python_requires_is_the_minimum_the_code_needs():
    """vermin reads every module (imports, syntax, library calls) and says which Python it needs;
    claiming less (3.10 while `import tomllib` needs 3.11) is how a user got a traceback."""
    run = subprocess.run([str(Path(sys.executable).parent / "vermin"), "--no-tips", "--eval-annotations", "--no-parse-comments",
                          str(REPO / "fsguard")], capture_output=True, text=True, timeout=300)
    found = re.search(r"Minimum required versions: (?:[\d.~]+, )?3\.(\d+)", run.stdout)
    assert found, run.stdout + run.stderr
    assert claimed_minimum() == (3, int(found.group(1))), run.stdout


def test_the_classifiers_list_the_supported_versions_from_the_minimum():
    classifiers = metadata()["metadata"]["classifiers"].split("\n")
    versions = sorted(int(m.group(1)) for c in classifiers
                      if (m := re.fullmatch(r"Programming Language :: Python :: 3\.(\d+)", c.strip())))
    assert versions and versions[0] == claimed_minimum()[1]
    assert versions == list(range(versions[0], versions[-1] + 1))


def test_the_tests_run_on_a_supported_python():
    assert sys.version_info[:2] >= claimed_minimum()


def test_the_licence_the_metadata_names_is_shipped():
    cfg = metadata()["metadata"]
    assert cfg["license"] == "MIT"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
    assert "License :: OSI Approved :: MIT License" in cfg["classifiers"]
