"""``python -m atrous`` (and ``torchrun -m atrous``) runs the command-line tool."""

from atrous.cli.main import main

raise SystemExit(main())
