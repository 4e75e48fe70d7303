"""The CLI surface: --version, defaults in --help, one name per concept (old spellings warn), lazy imports."""

import subprocess
import sys
import warnings

import pytest

import grn_jax
from grn_jax.cli import build_parser, main


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"grn-jax {grn_jax.__version__}"


@pytest.mark.parametrize("argv, shown", [
    (("simulate",), ["--cells CELLS         (default: 2000)", "(default: 0.2)"]),
    (("embed",), ["(default: 64)", "(default: 2048)", "(default: 15)"]),
    (("grn", "assign"), ["(default: 15)", "(default: 0.05)"]),
    (("eval", "annotation"), ["(default: 32)", "default 3)", "(default: 0.2)"]),
])
def test_help_shows_defaults_once(capsys, argv, shown):
    out = _help(capsys, *argv)
    flat = " ".join(out.split())
    for s in shown:
        assert " ".join(s.split()) in flat, (s, out)
    assert "(default: None)" not in flat and "(default: False)" not in flat
    assert flat.count("(default: 15) (default: 15)") == 0


# (argv with the old spelling, the same argv with the canonical one, namespace field to compare)
ALIASES = [
    (["prepare", "x.h5ad", "--out", "o", "--cell-type-column", "ct"], "--label-key", "ingest.cell_type_column"),
    (["grn", "infer", "x.h5ad", "--out", "o", "--cell-type-key", "ct"], "--label-key", "cell_type_key"),
    (["grn", "assign", "q.h5ad", "--out", "o", "--reference", "t.h5ad", "--networks", "n"], "--networks-dir",
     "networks"),
    (["grn", "assign", "q.h5ad", "--out", "o", "--networks-dir", "n", "--train", "t.h5ad"], "--reference", "train"),
    (["grn", "assign", "q.h5ad", "--out", "o", "--networks-dir", "n", "--reference", "t", "--k", "7"], "--knn-k",
     "k"),
    (["embed", "x.h5ad", "--checkpoint", "c", "--out", "o.h5ad", "--cell-type-column", "ct"], "--label-key",
     "cell_type_column"),
    (["eval", "probe", "x.h5ad", "--checkpoint", "c", "--out", "o", "--cell-type-column", "ct"], "--label-key",
     "cell_type_column"),
    (["eval", "annotation", "x.h5ad", "--checkpoint", "c", "--out", "o", "--label-key", "y",
      "--cell-type-column", "ct"], "--graph-label-key", "cell_type_column"),
    (["finetune", "x.h5ad", "--checkpoint", "c", "--out", "o", "--label-key", "y", "--cell-type-column", "ct"],
     "--graph-label-key", "cell_type_column"),
    (["bench", "diffusion", "--out-dir", "r"], "--out", "out_dir"),
]


@pytest.mark.parametrize("old_argv, new, field", ALIASES)
def test_old_spellings_parse_the_same_and_warn(old_argv, new, field):
    from grn_jax.cli import _warn_deprecated_spellings

    parser = build_parser()
    old = next(t for t in old_argv if t.startswith("--") and t in
               ("--cell-type-column", "--cell-type-key", "--networks", "--train", "--k", "--out-dir"))
    new_argv = [new if t == old else t for t in old_argv]
    a_old, a_new = parser.parse_args(old_argv), parser.parse_args(new_argv)
    assert getattr(a_old, field) == getattr(a_new, field) is not None
    assert vars(a_old).keys() == vars(a_new).keys()
    with pytest.warns(FutureWarning, match=f"{old} is deprecated; use {new}"):
        _warn_deprecated_spellings(parser, old_argv)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_deprecated_spellings(parser, new_argv)  # the canonical spelling does not warn


def test_help_names_only_the_canonical_spellings(capsys):
    out = _help(capsys, "grn", "assign")
    assert "--networks-dir" in out and "--reference" in out and "--knn-k" in out
    assert "--train" not in out and "--k K" not in out and "--networks " not in out
    assert "--cell-type-key" not in _help(capsys, "grn", "infer")
    assert "--out-dir" not in _help(capsys, "bench", "diffusion")


def test_help_and_argument_errors_import_no_jax():
    code = (
        "import sys\n"
        "from grn_jax.cli import main\n"
        "for argv in (['--help'], ['embed', '--help'], ['prepare']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax', 'orbax', 'anndata'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_top_level_help_says_what_the_tool_does(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "GRN-aware single-cell foundation models" in out and "start with `grn-jax quickstart`" in out
    assert "--version" in out and "command line: thin" not in out
