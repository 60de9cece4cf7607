"""The package as shipped: its declared dependencies, its version string, and what ``import`` loads."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11 (the test extra installs tomli there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_infoflow"

# Import names whose distribution is named otherwise (importlib.metadata.packages_distributions() covers the
# installed ones on Python >= 3.10; these keep the test exact where a package is not installed).
DISTRIBUTION_OF = {"yaml": "pyyaml", "PIL": "pillow", "jinja2": "jinja2"}


def _canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    """``"jsonargparse[signatures]>=4.27; python_version < '3.11'"`` -> ``"jsonargparse"``."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return _canonical(match.group(1))


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _declared() -> tuple[set[str], set[str]]:
    """(core dependencies, core + every extra), as canonical distribution names."""
    project = _pyproject()["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    extras = {_requirement_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    return core, core | extras


def _is_stdlib(module: str) -> bool:
    names = getattr(sys, "stdlib_module_names", None)  # Python >= 3.10
    if names is not None:
        return module in names
    if module in sys.builtin_module_names:  # pragma: no cover - Python 3.9
        return True
    import importlib.util  # pragma: no cover - Python 3.9

    spec = importlib.util.find_spec(module)  # pragma: no cover - Python 3.9
    origin = (spec.origin or "") if spec else ""  # pragma: no cover - Python 3.9
    stdlib = sysconfig.get_paths()["stdlib"]  # pragma: no cover - Python 3.9
    return origin.startswith(stdlib) and "site-packages" not in origin  # pragma: no cover - Python 3.9


def _imports(path: Path) -> Iterator[tuple[str, bool]]:
    """(top-level module, imported at module level) for every absolute import in ``path``.

    An import inside ``if TYPE_CHECKING:`` is not made at run time and is skipped; one inside a function
    runs only when that function is called (an optional dependency may be imported there).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def visit(node: ast.AST, module_level: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                yield from visit(ast.Module(body=child.orelse, type_ignores=[]), module_level)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name.split(".")[0], module_level
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module.split(".")[0], module_level
            inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from visit(child, inner)

    yield from visit(tree, True)


def _third_party_imports() -> dict[str, dict[str, bool]]:
    """{top-level module: {file relative to the repository: imported at module level}} of the package."""
    found: dict[str, dict[str, bool]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, module_level in _imports(path):
            if module == "lightning_infoflow" or module == "__future__" or _is_stdlib(module):
                continue
            where = found.setdefault(module, {})
            rel = str(path.relative_to(ROOT))
            where[rel] = where.get(rel, False) or module_level
    return found


def _distributions(module: str) -> set[str]:
    """The distribution names that may provide the import name ``module``."""
    names = {_canonical(module)}
    if module in DISTRIBUTION_OF:
        names.add(_canonical(DISTRIBUTION_OF[module]))
    try:
        from importlib.metadata import packages_distributions  # Python >= 3.10
    except ImportError:  # pragma: no cover - Python 3.9
        return names
    return names | {_canonical(d) for d in packages_distributions().get(module, [])}


def test_import_scan_sees_module_level_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    """The scanner the dependency test relies on tells the three kinds of import apart."""
    src = tmp_path / "m.py"
    src.write_text(
        "from __future__ import annotations\nimport os.path\nfrom typing import TYPE_CHECKING\nimport yaml\n"
        "if TYPE_CHECKING:\n    import lightning\nelse:\n    import tqdm\n"
        "def f():\n    from PIL import Image\n    import wandb.sdk\nfrom . import sibling\n",
        encoding="utf-8",
    )
    assert sorted(_imports(src)) == sorted(
        [("__future__", True), ("os", True), ("typing", True), ("yaml", True), ("tqdm", True),
         ("PIL", False), ("wandb", False)]
    )


def test_every_third_party_import_of_the_package_is_declared() -> None:
    """Each module the package imports names a distribution in pyproject.toml: one imported at module
    level among the core dependencies (``pip install lightning-infoflow`` alone must import it), one
    imported only inside functions at least in an extra."""
    core, everything = _declared()
    imports = _third_party_imports()
    assert {"torch", "yaml", "PIL", "tqdm"} <= set(imports), sorted(imports)  # the scan sees the known ones
    missing = []
    for module, files in sorted(imports.items()):
        needed = core if any(files.values()) else everything
        if not _distributions(module) & needed:
            kind = "core dependencies" if needed is core else "dependencies or extras"
            missing.append(f"{module} (imported in {', '.join(sorted(files))}) is not in pyproject's {kind}")
    assert not missing, "\n".join(missing)


def test_declared_dependencies_parse_and_jinja2_and_torchmetrics_stay_core() -> None:
    """The reporting HTML is rendered with Jinja2 and the distributed gather may use torchmetrics; both
    are run-time dependencies of a plain install."""
    core, _ = _declared()
    assert {"jinja2", "torchmetrics", "pyyaml", "pillow", "tqdm", "typing-extensions"} <= core


def test_every_data_file_of_the_package_ships() -> None:
    """Each non-Python file inside the package (type marker, concept lists, HTML templates) matches a
    ``[tool.setuptools.package-data]`` pattern, so a wheel carries it."""
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["lightning_infoflow"]
    data = [p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts]
    assert any(p.name == "py.typed" for p in data)
    left_out = [str(p.relative_to(PACKAGE)) for p in data
                if not any(p.relative_to(PACKAGE).match(pattern) for pattern in patterns)]
    assert not left_out, f"add these to [tool.setuptools.package-data] in pyproject.toml: {left_out}"


def test_version_is_written_once_and_read_by_setuptools() -> None:
    """pyproject.toml reads the version from ``lightning_infoflow.__version__`` instead of repeating it."""
    config = _pyproject()
    assert "version" not in config["project"]
    assert "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lightning_infoflow.__version__"}
    source = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+([a-z0-9.+-]*)?"$', source, re.M)


STAGES = {
    "import": "import lightning_infoflow as li",
    "estimator": "li.InfoFlowEstimator, li.InfoFlowResult, li.Probe",
    "callback": "li.InfoFlowCallback",
}


@pytest.fixture(scope="module")
def loaded() -> dict[str, set[str]]:
    """{stage: top-level modules in ``sys.modules`` after it}, the STAGES run in order in a fresh interpreter."""
    lines = ["import json, sys", "seen = {}"]
    for stage, code in STAGES.items():
        lines += [code, f"seen[{stage!r}] = sorted({{m.split('.')[0] for m in sys.modules}})"]
    lines.append("print(json.dumps(seen))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return {stage: set(modules) for stage, modules in json.loads(done.stdout.splitlines()[-1]).items()}


HEAVY = {"lightning", "pytorch_lightning", "matplotlib"}


def test_import_loads_neither_lightning_nor_matplotlib(loaded: dict[str, set[str]]) -> None:
    assert "lightning_infoflow" in loaded["import"]
    assert not loaded["import"] & HEAVY, sorted(loaded["import"] & HEAVY)


def test_estimator_and_result_load_without_lightning_or_matplotlib(loaded: dict[str, set[str]]) -> None:
    assert "torch" in loaded["estimator"]  # the estimator really was imported
    assert not loaded["estimator"] & HEAVY, sorted(loaded["estimator"] & HEAVY)


def test_the_callback_does_load_lightning(loaded: dict[str, set[str]]) -> None:
    """Control for the two tests above: the subprocess probe does see Lightning once the callback is used."""
    assert "lightning" in loaded["callback"]


@pytest.mark.parametrize("name", ["InfoFlowEstimator", "InfoFlowCallback", "__version__"])
def test_public_names_resolve(name: str) -> None:
    import lightning_infoflow

    assert getattr(lightning_infoflow, name) is not None
    assert name in dir(lightning_infoflow)


def _readme_ci_commands() -> list[str]:
    """The commands of step 3 ("what CI runs") in the README's Set up section, split at ``&&``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    block = setup.split("```bash", 1)[1].split("```", 1)[0]
    step3 = block.split("# 3.", 1)[1].split("\n", 1)[1]
    lines = [ln for ln in step3.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(lines) == 1, lines
    return [c.strip() for c in lines[0].split("&&")]


def test_readme_ci_commands_are_what_ci_runs() -> None:
    """The README's CI commands are the last commands of .ci/run, in the same order, and .ci/run runs every
    test tier (``-m ""`` overrides the default selection in pyproject's addopts)."""
    script = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    commands = [ln for ln in script if ln and not ln.startswith("#")]
    readme = _readme_ci_commands()
    assert commands[-len(readme):] == readme
    assert readme[-1] == 'python -m pytest -q -m ""'


def test_default_selection_leaves_out_the_opt_in_tiers() -> None:
    """``python -m pytest -q`` must pass without Chromium, DDP or long runs: the opt-in tiers are deselected,
    every tier is a registered marker, and the package's doctests are collected."""
    options = _pyproject()["tool"]["pytest"]["ini_options"]
    addopts = options["addopts"]
    selection = addopts[addopts.index("-m") + 1]
    registered = {m.split(":", 1)[0] for m in options["markers"]}
    for tier in ("slow", "integration", "browser", "ddp", "memory"):
        assert tier in registered and re.search(rf"\b{tier}\b", selection), tier
    assert selection.startswith("not (") and "--strict-markers" in addopts and "--doctest-modules" in addopts
    assert "lightning_infoflow" in options["testpaths"]
