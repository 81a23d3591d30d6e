"""``python -m banditd.server``: the ``banditd`` command line."""

from banditd.server.cli import main

raise SystemExit(main())
