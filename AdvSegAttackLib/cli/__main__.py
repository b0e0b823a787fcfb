"""`python -m AdvSegAttackLib.cli` (how Slicer's PythonSlicer starts the engine): the `advseg` command."""

import sys

from . import main

sys.exit(main())
