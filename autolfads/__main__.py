import sys

from autolfads.cli import main

sys.exit(main())
