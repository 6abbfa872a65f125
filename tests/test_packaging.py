"""Packaging: envs/ and agents/ install as ptreclaim.envs / ptreclaim.agents, the
simulator stays free of gymnasium, and a regular (non-editable) install works."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package's sources live (pyproject.toml's package-dir).
SOURCE_ROOTS = {
    "ptreclaim": ROOT / "ptreclaim",
    "ptreclaim.envs": ROOT / "envs",
    "ptreclaim.agents": ROOT / "agents",
}


def _sim_modules() -> list[str]:
    """Dotted names of every module of the pure simulator (envs/sim/**/*.py)."""
    names = []
    for path in sorted((ROOT / "envs" / "sim").rglob("*.py")):
        parts = list(path.relative_to(ROOT / "envs").with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(["ptreclaim", "envs", *parts]))
    return names


def _run(code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run ``code`` in a fresh interpreter; return stdout, fail with stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize(
    ("name", "init"),
    [
        ("ptreclaim", "ptreclaim/__init__.py"),
        ("ptreclaim.envs", "envs/__init__.py"),
        ("ptreclaim.envs.sim", "envs/sim/__init__.py"),
        ("ptreclaim.agents", "agents/__init__.py"),
    ],
)
def test_packages_import_under_ptreclaim(name: str, init: str) -> None:
    module = importlib.import_module(name)
    assert module.__name__ == name
    assert module.__file__ is not None
    assert Path(module.__file__).resolve() == (ROOT / init).resolve()


def test_bare_names_not_imported() -> None:
    """Nothing in the test session imported our folders under their bare names."""
    importlib.import_module("ptreclaim.envs.sim")
    importlib.import_module("ptreclaim.agents")
    for bare in ("envs", "agents"):
        module = sys.modules.get(bare)
        if module is not None:  # another distribution's "agents" would be fine
            file = getattr(module, "__file__", None) or ""
            assert not Path(file).resolve().is_relative_to(ROOT), (
                f"{bare!r} was imported from {file}: import ptreclaim.{bare} instead"
            )


def _project_sources() -> list[Path]:
    """The project's own .py files (not .venv, build products or other clutter)."""
    skip = {".venv", ".git", "build", "dist", "runs", "__pycache__"}
    found = []
    for folder, subdirs, files in os.walk(ROOT):
        subdirs[:] = [d for d in subdirs if d not in skip and not d.endswith(".egg-info")]
        found += [Path(folder, name) for name in files if name.endswith(".py")]
    return sorted(found)


def test_no_bare_envs_agents_imports() -> None:
    """`import envs...` / `from agents import ...` work only from the repo root.

    (ruff's banned-api cannot tell: it resolves relative imports inside envs/ to
    the bare names.)
    """
    offenders = []
    for path in _project_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.partition(".")[0] in ("envs", "agents"):
                    rel = path.relative_to(ROOT)
                    offenders.append(f"{rel}:{node.lineno}: ptreclaim.{name}")
    assert not offenders, "import these under ptreclaim instead:\n" + "\n".join(offenders)


def test_version_matches_metadata() -> None:
    from importlib.metadata import version

    import ptreclaim

    assert version("ptreclaim") == ptreclaim.__version__


@pytest.mark.parametrize("module", _sim_modules())
def test_sim_imports_no_gymnasium(module: str, tmp_path: Path) -> None:
    """DESIGN §2/§5.1: the pure model is numpy + stdlib only, never gymnasium."""
    out = _run(
        f"""
        import sys
        before = set(sys.modules)
        import {module}
        loaded = sorted({{m.partition(".")[0] for m in set(sys.modules) - before}})
        print(" ".join(loaded))
        """,
        cwd=tmp_path,  # not the repo root: the bare names must not be importable
    )
    loaded = set(out.split())
    assert "gymnasium" not in loaded
    # cython_runtime (and _cython_*) come with numpy.random's compiled modules;
    # other leading-underscore names are interpreter helpers.
    allowed = set(sys.stdlib_module_names) | {"ptreclaim", "numpy", "cython_runtime"}
    foreign = {name for name in loaded - allowed if not name.startswith("_")}
    assert not foreign, f"{module} loads non-stdlib modules besides numpy: {sorted(foreign)}"


def test_regular_install(tmp_path: Path) -> None:
    """A non-editable install (what a wheel gives) contains every package and runs."""
    # Build from a copy so the shared tree gets no build/ or *.egg-info.
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("ptreclaim", "envs", "agents", "configs", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--no-deps"]
    pip += ["--no-build-isolation", "--target", str(target), str(src)]
    subprocess.run(pip, check=True, timeout=300)

    # Every source package (a folder with __init__.py) and module must be installed.
    missing = []
    for package, folder in SOURCE_ROOTS.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(folder)
            installed = target.joinpath(*package.split("."), rel)
            if not installed.is_file():
                missing.append(f"{path.relative_to(ROOT)} -> {installed.relative_to(target)}")
    assert not missing, "not in a regular install (update pyproject.toml's packages):\n" + (
        "\n".join(missing)
    )
    oracle_c = ROOT / "envs" / "kernel" / "ptoracle.c"
    if oracle_c.exists():
        assert (target / "ptreclaim" / "envs" / "kernel" / "ptoracle.c").is_file()
    # The built-in scenarios and suites ship as package data (the env loads them).
    for sub in ("scenarios", "suites"):
        shipped = sorted(p.name for p in (ROOT / "configs" / sub).glob("*.yaml"))
        installed = sorted(p.name for p in (target / "ptreclaim" / "configs" / sub).glob("*.yaml"))
        assert installed == shipped, sub
    # The captured traces ship as package data of ptreclaim.data (the "trace" workloads).
    assert sorted(p.name for p in (target / "ptreclaim" / "data" / "traces").glob("*.npz")) == \
        sorted(p.name for p in (ROOT / "data" / "traces").glob("*.npz"))

    # Import from the install alone: clean PYTHONPATH, run outside the repo.  The
    # editable install's import hook sits after the path finder, so the copy wins.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    out = _run(
        """
        import ptreclaim, ptreclaim.envs.sim.opscript as m
        print(ptreclaim.__file__)
        print(m.__file__)
        """,
        env=env,
        cwd=tmp_path,
    )
    for line in out.splitlines():
        assert Path(line).resolve().is_relative_to(target.resolve()), line


def test_the_core_rebuilds_when_a_header_changes() -> None:
    # setuptools rebuilds an extension when a source or a declared dependency is newer than
    # the built module; the core's headers are declared, so `setup.py build_ext --inplace`
    # (and pip's editable build) does not leave a stale core after a header-only change.
    code = textwrap.dedent("""
        import runpy
        import setuptools
        captured = {}
        setuptools.setup = lambda **kwargs: captured.update(kwargs)  # declare, build nothing
        runpy.run_path("setup.py")
        (ext,) = captured["ext_modules"]
        print("\\n".join(ext.depends))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    headers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "envs/sim/fast").glob("*.hpp"))
    assert headers and set(headers) <= set(r.stdout.split()), (headers, r.stdout)
