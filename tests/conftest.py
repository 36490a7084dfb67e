import os
import sys
from pathlib import Path

# The project runs from its root (it installs no packages): make the root importable.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")
