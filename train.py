"""Train a meaning-preserving code: ``python train.py [group=option] [key=value] ...``.

The same command as ``meaning-train`` (``meaning_transform/train.py``); run from here, its
outputs land in this repository's ``outputs/`` whatever the current folder.
"""

import os
from pathlib import Path

os.environ.setdefault("MEANING_TRANSFORM_ROOT", str(Path(__file__).resolve().parent))

from meaning_transform.train import main  # noqa: E402

if __name__ == "__main__":
    main()
