"""`python -m adapter_studio`: the same as the `adapter-studio` command."""

import sys

from adapter_studio.cli import main

sys.exit(main())
