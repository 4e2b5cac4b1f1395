import sys

from autolfads.cli import main

# Guarded: a `spawn` child of `python -m autolfads` imports this module
# again (as `__mp_main__`), and must not run a second command.
if __name__ == "__main__":
    sys.exit(main())
