# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Applications on top of the library: the MONAI Bundle helpers (and, later, MONAI Label)."""
