"""What a plain `pip install` gives a user: declared dependencies, version bounds, shipped presets, LICENSE."""

import ast
import importlib.metadata as md
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPS = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]


def _third_party_imports() -> set[str]:
    """Top-level modules imported anywhere in grn_jax/ and kernels/ (stdlib and grn_jax itself left out)."""
    names = set()
    for path in list((ROOT / "grn_jax").rglob("*.py")) + list((ROOT / "kernels").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("grn_jax", "kernels", "__future__")}


def test_every_imported_package_is_a_declared_dependency():
    declared = {md.distribution(r.name).metadata["Name"].lower() for r in DEPS}
    dist_of = md.packages_distributions()
    optional = {"triton", "jax_triton", "torch"}  # GPU-only paths behind import guards
    missing = {}
    for mod in sorted(_third_party_imports() - optional):
        dists = {d.lower() for d in dist_of.get(mod, [mod])}
        if not dists & declared:
            missing[mod] = sorted(dists)
    assert not missing, f"imported but not in [project].dependencies: {missing}"
    assert "pandas" in {r.name for r in DEPS}


def test_version_bounds_hold_what_is_installed_and_cap_the_fast_moving_majors():
    for r in DEPS:
        assert r.specifier.contains(md.version(r.name), prereleases=True), (str(r), md.version(r.name))
    capped = {r.name: r for r in DEPS if any(s.operator == "<" for s in r.specifier)}
    for name in ("jax", "flax", "orbax-checkpoint"):
        assert name in capped, f"{name} needs an upper bound"
        nxt = ".".join(md.version(name).split(".")[:2]) + ".99"
        assert not capped[name].specifier.contains(str(int(md.version(name).split(".")[0]) + 1) + ".0"), name
        assert capped[name].specifier.contains(nxt), (name, nxt)  # the tested release line stays allowed


def test_presets_are_package_data_and_experiments_links_to_them():
    from grn_jax.config import load_run_config
    from grn_jax.resources import config_path, preset_names

    assert set(preset_names()) >= {"tiny", "gremln_base", "grnformer_base", "pod_example"}
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["grn_jax.resources"]
    assert "configs/*.yaml" in globs
    for name in preset_names():
        shipped = Path(str(config_path(name)))
        assert shipped.parent == ROOT / "grn_jax" / "resources" / "configs"
        linked = ROOT / "experiments" / "configs" / f"{name}.yaml"
        if name in ("tiny", "gremln_base", "grnformer_base", "pod_example"):  # the paper-reproduction presets
            assert linked.read_text() == shipped.read_text()
        assert load_run_config(name).name  # a preset name works as --config, without experiments/
    with pytest.raises(ValueError, match="preset"):
        load_run_config("no_such_preset")


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}


@pytest.mark.slow
def test_the_wheel_ships_presets_and_license(tmp_path):
    pytest.importorskip("wheel", reason="building a wheel needs the `wheel` package")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("grn_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for preset in ("tiny", "gremln_base", "grnformer_base", "pod_example"):
        assert f"grn_jax/resources/configs/{preset}.yaml" in names
    assert any(n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in names), names
