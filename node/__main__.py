"""`python -m node` is `lanchat`."""

import sys

from .cli import main

sys.exit(main())
