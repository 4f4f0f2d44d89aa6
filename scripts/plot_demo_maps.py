#!/usr/bin/env python
"""Figure of what inference wrote for one demo test picture, beside the picture and its ground truth:

    python scripts/plot_demo_maps.py runs/demo_data runs/demo/maps lesion_0003 docs/demo_maps.png

Panels: the input PNG, its anomaly mask, ``<stem>_overlay.png`` and ``<stem>_map.png`` as inference wrote them
(each at the input's own size, shown pixel for pixel, side by side).
"""

import sys
from pathlib import Path

from PIL import Image


def main(data: str, maps: str, stem: str, out: str, zoom: int = 2) -> None:
    panels = [
        Image.open(Path(data) / "test" / "Ungood" / "img" / f"{stem}.png"),
        Image.open(Path(data) / "test" / "Ungood" / "anomaly_mask" / f"{stem}.png"),
        Image.open(Path(maps) / "Ungood" / "img" / f"{stem}_overlay.png"),
        Image.open(Path(maps) / "Ungood" / "img" / f"{stem}_map.png"),
    ]
    w, h = panels[0].size
    sheet = Image.new("RGB", (4 * w + 3 * 4, h), "white")
    for i, p in enumerate(panels):
        sheet.paste(p.convert("RGB"), (i * (w + 4), 0))
    sheet.resize((sheet.width * zoom, h * zoom), Image.NEAREST).save(out)


if __name__ == "__main__":
    main(*sys.argv[1:5])
