"""`python -m serving.model_server ...`: see serving/model_server/cli.py."""

import sys

from serving.model_server.cli import main

sys.exit(main())
