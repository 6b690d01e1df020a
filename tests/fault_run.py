"""`python -m jaxft.main` with the fault-injection hooks of tests/faults.py installed (JAXFT_FAULT_AT)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from faults import FaultHooks, poison_losses  # noqa: E402

from jaxft.main import main  # noqa: E402

if __name__ == "__main__":
    poison_losses()
    sys.exit(main(sys.argv, hooks=FaultHooks.from_env()))
