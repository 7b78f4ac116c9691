"""Subcommands of ``fsguard`` beyond serve/db/calls, one module per area (lists, customers, ...).

Each module defines ``register(subparsers)``; fsguard.ops.cli finds them all, skipping a module whose
name starts with ``_`` (helpers the areas share, such as ``_common``). A module may also append
``(app, server) -> None`` callables to ``fsguard.ops.commands._common.SERVE_HOOKS`` to run things beside the server.
"""
