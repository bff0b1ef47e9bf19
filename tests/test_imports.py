"""Layering: the engine never imports a study nor tests a model's name; the config stays free of JAX."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DECAY = os.path.join(ROOT, "decay")
ENGINE = ("step.py", "program.py", "loop.py", "row.py", "runner.py", "family.py", "blocks.py")


def _imported_modules(path: str) -> list[str]:
    """Every module an `import` or `from ... import` of the file names (relative imports resolved within decay)."""
    tree = ast.parse(open(path).read(), filename=path)
    package = "decay"  # the engine modules sit directly in decay/
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]  # `from decay import studies`
    return names


@pytest.mark.parametrize("module", ENGINE)
def test_engine_does_not_import_the_studies(module):
    imported = _imported_modules(os.path.join(DECAY, module))
    assert imported, f"no imports parsed from decay/{module}"
    studies = [m for m in imported if m == "decay.studies" or m.startswith("decay.studies.")]
    assert not studies, f"decay/{module} imports {studies}"


def test_import_parser_sees_study_imports_in_every_form(tmp_path):
    path = tmp_path / "m.py"
    source = [
        "import decay.studies.phase",
        "from decay import studies",
        "from .studies import claims",
        "def f():",
        "    from decay.studies import depth_sweep",
    ]
    path.write_text("\n".join(source) + "\n")
    found = _imported_modules(str(path))
    assert {"decay.studies.phase", "decay.studies", "decay.studies.claims", "decay.studies.depth_sweep"} <= set(found)


def test_no_module_outside_the_families_tests_a_model_name():
    offenders = []
    for folder, _, files in os.walk(DECAY):
        if os.path.relpath(folder, DECAY).split(os.sep)[0] == "families":
            continue
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            for i, line in enumerate(open(path).read().splitlines(), 1):
                if any(s in line for s in ("model ==", "model !=", '.model == "')):
                    offenders.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert not offenders, "ask the family (decay.family.Family), not the model name:\n" + "\n".join(offenders)


def test_config_and_light_modules_do_not_import_jax():
    # One fresh interpreter: decay.config is what every entry point imports before parsing flags.
    code = (
        "import sys\n"
        "import decay, decay.config, decay.errors, decay.data\n"
        "heavy = sorted(m for m in ('jax', 'jaxlib', 'flax', 'optax', 'orbax') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "none", f"importing decay.config pulls in {out.stdout.strip()}"
