"""Benchmarks: the side-by-side harness, the systems it compares, recorded results."""

# This folder is the package deploy_sdk.benchmarks (deploy_sdk/benchmarks links here). From a checkout's root, or
# in an editable install (which puts the checkout on sys.path), it is also reachable as a top-level `benchmarks`:
# that would be a second copy of every module, with its own state and classes, so it is refused.
if __name__ != "deploy_sdk.benchmarks":
    raise ImportError(f"import deploy_sdk.benchmarks, not {__name__!r} (the top-level folder is that package)")
