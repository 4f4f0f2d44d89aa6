"""Data: BMAD datalists, demo phantoms and preprocessing."""

from monai_mtlmad.data.phantom import head_phantoms

__all__ = ["head_phantoms"]
