"""`python -m zswarm.demo ...` is `zswarm-demo ...`."""

import sys

from zswarm.demo.cli import main

sys.exit(main())
