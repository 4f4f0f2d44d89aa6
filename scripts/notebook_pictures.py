"""Write the K-th picture of an executed notebook to a PNG file (the README's notebook pictures).

    python scripts/notebook_pictures.py runs/notebooks/executed/02_train_and_detect_2d.ipynb 4 docs/notebooks/02.png

K counts from 1 over every picture the notebook's cells drew, in order.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import nbformat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebook")
    p.add_argument("k", type=int)
    p.add_argument("output")
    a = p.parse_args()
    nb = nbformat.read(a.notebook, as_version=4)
    pictures = [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if "image/png" in o.get("data", {})]
    if not 1 <= a.k <= len(pictures):
        raise SystemExit(f"{a.notebook} holds {len(pictures)} pictures, not a {a.k}th (was it executed?).")
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(pictures[a.k - 1]))
    print(out)


if __name__ == "__main__":
    main()
