"""Shared CLI assertions for the bad-input tests."""

from grn_jax.cli import main


def fails_in_one_line(capsys, argv, *needles) -> str:
    """`main(argv)` exits 2 with a single stderr line containing every needle, and no traceback; returns it."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err
