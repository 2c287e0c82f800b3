"""Comparison helpers shared by the tests, with per-dtype tolerances (some tests still write theirs inline).

A failing comparison prints the worst element, its two values and the tolerance it would have needed.
"""

from __future__ import annotations

import numpy as np

# (rtol, atol) by dtype name.
TOLERANCES = {
    "float32": (1e-5, 1e-5),
    "float16": (4e-3, 4e-3),
}


def assert_close(actual, expected, dtype: str = "float32", rtol=None, atol=None, what: str = "values") -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, explaining the worst miss."""
    a = np.asarray(_to_numpy(actual), dtype=np.float64)
    e = np.asarray(_to_numpy(expected), dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    d_rtol, d_atol = TOLERANCES[dtype]
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    if a.size == 0:
        return
    err = np.abs(a - e)
    allowed = atol + rtol * np.abs(e)
    bad = ~(err <= allowed)
    if bad.any():
        excess = np.where(np.isnan(err), np.inf, err - allowed)
        idx = np.unravel_index(int(np.argmax(excess)), a.shape)
        needed_atol = float(np.nanmax(err - rtol * np.abs(e)))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.size} elements differ beyond rtol={rtol}, atol={atol}; "
            f"worst at {tuple(int(i) for i in idx)}: actual {a[idx]!r} vs expected {e[idx]!r} "
            f"(|diff| {err[idx]:.3g}); atol needed with this rtol: {needed_atol:.3g}"
        )


def _to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().float().numpy()
    return x
