"""Conversion: checkpoint loading, the deployment module, ONNX export, precision graphs, TensorRT engines.

Needs the ``convert`` extra (torch, torchvision, onnx).
"""

# This folder is the package deploy_sdk.conversion (deploy_sdk/conversion links here). From a checkout's root, or
# in an editable install (which puts the checkout on sys.path), it is also reachable as a top-level `conversion`:
# that would be a second copy of every module, with its own state and classes, so it is refused.
if __name__ != "deploy_sdk.conversion":
    raise ImportError(f"import deploy_sdk.conversion, not {__name__!r} (the top-level folder is that package)")
