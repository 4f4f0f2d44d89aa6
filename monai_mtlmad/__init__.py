# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""monai-mtlmad: MTL-MAD medical anomaly detection as a MONAI plugin.

Subpackages are imported on demand so that, e.g., ``monai_mtlmad.transforms`` can be used in a MONAI pipeline
without loading the learner: ``transforms`` and ``data`` stand alone; ``tasks`` build on transforms and losses;
``networks`` know no files or training loop; ``engines`` sit on all of them.
"""

__version__ = "0.1.0.dev0"
__all__ = ["__version__"]
