"""``python -m banditd``: the ``banditd`` command line."""

from banditd.server.cli import main

raise SystemExit(main())
