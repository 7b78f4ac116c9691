"""``python -m fsguard``: the same as the ``fsguard`` command."""

from gevent import monkey

monkey.patch_all()

from fsguard.ops.cli import main  # noqa: E402

raise SystemExit(main())
