#!/usr/bin/env python
"""Figure of the demo phantoms: normals (top) and lesioned test images with mask contours (bottom).

    python scripts/plot_demo_dataset.py docs/demo_dataset.png
"""

import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from monai_mtlmad.data import bmad_datalist, make_demo_dataset  # noqa: E402


def main(out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_dataset(tmp, 2, n_train=6, n_valid=2, n_test=12)
        normals = bmad_datalist(root, "train")[:6]
        lesions = [d for d in bmad_datalist(root, "test") if d["label"]][:6]
        load = lambda path: np.asarray(Image.open(path))  # noqa: E731  (the pictures as stored, rows first)
        fig, axes = plt.subplots(2, 6, figsize=(15, 5.4))
        for ax, d in zip(axes[0], normals):
            ax.imshow(load(d["image"]), cmap="gray", vmin=0, vmax=255)
            ax.set_title("normal", fontsize=9)
        for ax, d, kind in zip(axes[1], lesions, ["tumour", "infarct", "bleed"] * 2):
            ax.imshow(load(d["image"]), cmap="gray", vmin=0, vmax=255)
            ax.contour(load(d["mask"]) > 0, levels=[0.5], colors="red", linewidths=1)
            ax.set_title(f"{kind} (mask in red)", fontsize=9)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle("monai-mtlmad demo dataset: synthetic head phantoms, not clinical data", fontsize=11)
        fig.tight_layout()
        fig.savefig(out, dpi=70)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/demo_dataset.png")
