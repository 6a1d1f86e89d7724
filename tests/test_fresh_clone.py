"""The repository stands alone: a copy of what git would commit, in a folder with nothing beside
it, runs its schema tests. A fixture read from outside the repository (../shared, say) fails here
although it passes on a machine that has it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def committed_files() -> list[str]:
    """The files a commit of the working tree would hold: tracked ones and untracked ones not ignored."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout: nothing to clone")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def test_a_fresh_clone_with_nothing_beside_it_passes_its_schema_tests(tmp_path):
    clone = tmp_path / "alone" / "gridded"
    for name in committed_files():
        dest = clone / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["gridded"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDDED_")}
    env["PYTHONPATH"] = str(clone / "src")  # the copy's package, not the one installed from ROOT
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_argo.py", "-k",
         "validates_against_argo_schema or misspelt"],
        cwd=clone, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-1000:]
    imported = subprocess.run([sys.executable, "-c", "import gridded; print(gridded.__file__)"], cwd=clone, env=env,
                              capture_output=True, text=True, check=True).stdout.strip()
    assert Path(imported).is_relative_to(clone), imported
