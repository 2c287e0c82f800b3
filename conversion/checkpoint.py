"""Compatibility module: the checkpoint loader is the ``deploy_sdk.conversion.checkpoints`` package.

Re-exports that package's public names (its ``__all__``), so that ``from deploy_sdk.conversion.checkpoint import
load_checkpoint`` keeps working.
"""

from deploy_sdk.conversion.checkpoints import *  # noqa: F403
from deploy_sdk.conversion.checkpoints import __all__  # noqa: F401
