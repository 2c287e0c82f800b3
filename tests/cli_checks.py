"""Checks on what the CLI prints, shared by the CLI tests."""

from __future__ import annotations

from deploy_sdk.cli import main


def one_line_error(capsys, argv, prefix=None) -> str:
    """Run ``maskrcnn-deploy ARGV``; it must exit 1 with exactly one stderr line, no traceback, starting with
    ``maskrcnn-deploy PREFIX: error:`` (PREFIX: the command, ``argv[0]``, unless given). Returns that line."""
    rc = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 1, f"exit code {rc}; stderr: {err}"
    assert "Traceback" not in captured.err
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
    assert err.startswith(f"maskrcnn-deploy {prefix or argv[0]}: error: "), err
    return err
