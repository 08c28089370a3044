import sys

from cachemon.cli.main import main

sys.exit(main())
