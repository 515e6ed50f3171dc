"""`python -m consumer` is the same as the `tdm-alerts` command."""

import sys

from consumer.cli import main

sys.exit(main())
