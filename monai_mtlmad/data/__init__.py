"""Data: BMAD datalists, demo phantoms and preprocessing."""

from monai_mtlmad.data.phantom import LESION_KINDS, head_phantoms, insert_lesions

__all__ = ["LESION_KINDS", "head_phantoms", "insert_lesions"]
