"""``python -m lib_trainer.cli``."""
import sys

from lib_trainer.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())
