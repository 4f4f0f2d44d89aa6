# Copyright (c) monai-mtlmad contributors
# Licensed under the Apache License, Version 2.0
"""Materialise the MONAI Label app folder, or serve a model file in one command.

    python -m monai_mtlmad.apps.monailabel app APP_DIR --model runs/demo/models/model.pt
    python -m monai_mtlmad.apps.monailabel serve --model runs/demo/models/model.pt --studies STUDIES [--port 8000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

MAIN_PY = '''"""MONAI Label app of monai-mtlmad (written by `python -m monai_mtlmad.apps.monailabel app`)."""

from monai_mtlmad.apps.monailabel.app import MTLMADApp  # noqa: F401  (MONAI Label serves this MONAILabelApp subclass)
'''


def make_app(app_dir: str | Path, model: str | Path | None = None) -> Path:
    """Write ``APP_DIR/main.py`` and copy ``model`` to ``APP_DIR/model/model.pt`` (where retraining publishes new
    versions; the original file is left as it is). Returns the app folder."""
    app_dir = Path(app_dir)
    (app_dir / "model").mkdir(parents=True, exist_ok=True)
    (app_dir / "main.py").write_text(MAIN_PY, encoding="utf-8")
    served = app_dir / "model" / "model.pt"
    if model is not None:
        model = Path(model)
        if not model.is_file():
            raise SystemExit(f"{model}: no model file (train one with the bundle's train.json).")
        if not served.exists() or not served.samefile(model):
            shutil.copy2(model, served)
    elif not served.is_file():
        raise SystemExit(f"{served}: no model file; give --model.")
    return app_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m monai_mtlmad.apps.monailabel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("app", help="write a MONAI Label app folder serving a model file")
    a.add_argument("app_dir")
    a.add_argument("--model", default=None, help="model file to serve (copied into the app)")
    s = sub.add_parser("serve", help="write the app folder and start the MONAI Label server on a folder of studies")
    s.add_argument("--model", required=True)
    s.add_argument("--studies", required=True, help="a folder of studies (NIfTI, NRRD, PNG, ...)")
    s.add_argument("--app", default="mtlmad_monailabel_app", help="the app folder to write")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--fast", default=None,
                   help="true/false; default: the fast mode when the file holds one that kept the full mode's quality")
    s.add_argument("--device", default=None)
    s.add_argument("--train_steps", type=int, default=None)
    s.add_argument("--min_normals", type=int, default=None)
    args = p.parse_args(argv)
    if args.command == "app":
        print(make_app(args.app_dir, args.model))
        return
    app = make_app(args.app, args.model)
    conf = []
    for key in ("fast", "device", "train_steps", "min_normals"):
        if getattr(args, key) is not None:
            conf += ["--conf", key, str(getattr(args, key))]
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", args.studies,
           "--host", args.host, "--port", str(args.port), *conf]
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    main()
