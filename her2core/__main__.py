import sys

from her2core.cli import main

sys.exit(main())
