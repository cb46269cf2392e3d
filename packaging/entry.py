"""PyInstaller entry script for the frozen `adapter-studio` executable (see adapter-studio.spec)."""

import multiprocessing
import sys

if __name__ == "__main__":
    # datasets/torch may start worker processes; in a frozen app they re-enter this script.
    multiprocessing.freeze_support()
    from engine.cli import main

    sys.exit(main())
