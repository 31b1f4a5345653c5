"""What `pip install .` ships and needs: recipes as package data, the extras, the version,
and the CI command (checked without building a virtual environment)."""

from __future__ import annotations

import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import smakit
from smakit.cli import main
from smakit.train import list_recipes
from smakit.train.config import recipes_dir

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_recipes_are_package_resources():
    """The recipes live inside the package, where an installed copy finds them."""
    shipped = sorted(p.name for p in (importlib.resources.files("smakit") / "recipes").iterdir()
                     if p.name.endswith(".toml"))
    assert len(shipped) >= 4
    assert recipes_dir().resolve() == Path(str(importlib.resources.files("smakit") / "recipes")).resolve()
    assert sorted(f"{name}.toml" for name in list_recipes()) == shipped
    assert not (ROOT / "recipes").exists(), "recipes/ moved to smakit/recipes/"


def test_wheel_contains_every_recipe(tmp_path):
    """Build the wheel as `pip install .` would (from a copy, no network) and look inside."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "smakit", src / "smakit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("smakit-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"smakit/recipes/{p.name}" for p in (ROOT / "smakit" / "recipes").glob("*.toml")}
    assert expected and expected <= inside, f"missing from the wheel: {sorted(expected - inside)}"


def _requirement_names(reqs: list[str]) -> dict[str, str]:
    return {re.match(r"[\w.-]+(\[[\w,]+\])?", r).group(0).lower(): r for r in reqs}


def test_dependencies():
    """torch without an upper bound; training-only packages in the `train` extra; ruff tested."""
    deps = _requirement_names(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "torch" in deps and "<" not in deps["torch"] and "==" not in deps["torch"], deps["torch"]
    for name in ("matplotlib", "tqdm"):
        assert name not in deps and name in _requirement_names(extras["train"])
    test = _requirement_names(extras["test"])
    assert "ruff" in test and "smakit[train]" in test


def test_library_imports_without_the_train_extra(tmp_path):
    """`import smakit` and `smakit recipes` work without matplotlib and tqdm; `smakit train`
    says which extra to install."""
    code = ("import sys\n"
            "sys.modules.update(matplotlib=None, tqdm=None)  # as if not installed\n"
            "import smakit, smakit.train\n"
            "from smakit.cli import main\n"
            "assert main(['recipes']) == 0\n"
            f"sys.exit(main(['train', 'seqboat-listops', '--out', {str(tmp_path / 'run')!r}]))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "seqboat-listops" in proc.stdout
    assert "needs matplotlib, tqdm: pip install 'smakit[train]'" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"smakit {smakit.__version__}"


def test_ci_runs_the_readme_test_command():
    """.ci/run runs exactly the README's test command (which includes ruff)."""
    readme = (ROOT / "README.md").read_text().splitlines()
    command = readme[next(i for i, line in enumerate(readme) if line.startswith("# 2. the tests")) + 1]
    assert "ruff check" in command and "pytest" in command
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[Unreleased\]$", text, re.MULTILINE)
    assert re.search(rf"^## \[{re.escape(smakit.__version__)}\]", text, re.MULTILINE)
