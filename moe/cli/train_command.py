"""`hivemoe train [CONFIG.yaml] [key=value ...]`: exactly `python train.py ...` from the source checkout.

train.py stays the one place that wires a run (it is what users read first); this only finds and runs it, with the
same arguments and exit status.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

TRAIN_PY = Path(__file__).resolve().parents[2] / "train.py"


def main(argv: list[str]) -> int:
    if not TRAIN_PY.is_file():
        print(f"error: hivemoe train runs {TRAIN_PY.name} from a source checkout; none at {TRAIN_PY}", file=sys.stderr)
        return 1
    entry = runpy.run_path(str(TRAIN_PY), run_name="hivemoe_train")
    if argv[:1] in (["-h"], ["--help"]):
        print((entry["__doc__"] or "").strip())
        return 0
    return entry["main"](argv)
