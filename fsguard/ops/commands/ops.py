"""Running fsguard: what ``fsguard serve`` starts beside the call server, and ``fsguard config``.

Beside the Event Socket listener, ``serve`` gets (through ``fsguard.ops.commands._common.SERVE_HOOKS``):

* the HTTP server (health, readiness, metrics, admin API) when ``http.enabled``;
* systemd notifications (READY, WATCHDOG, STOPPING, RELOADING) when started by systemd;
* a reload (SIGHUP, ``systemctl reload``, ``POST /api/reload``) that re-reads the policy parts of
  the configuration and keeps what needs a restart (listeners, database, node id) as it is.

``fsguard config example`` prints every setting of every section with its default and what it
does (conf/fsguard.toml.example is its output); ``fsguard config check`` validates a file before a
reload; ``fsguard config show`` prints the settings in effect, secrets hidden.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import socket
import typing
from pathlib import Path
from typing import Any, Callable

import structlog

from fsguard.config import Settings
from fsguard.rules.checks import load_settings
from fsguard.ops.commands._common import SERVE_HOOKS, CLIError, Context, print_json

log = structlog.get_logger("fsguard.ops")

#: sections a reload cannot change: the process would have to rebind or reconnect
RESTART_SECTIONS = ("esl", "database", "node")
#: single settings a reload cannot change
RESTART_KEYS = (("http", "listen"), ("http", "enabled"))


# ------------------------------------------------------------------ reload


class PolicyReloader:
    """Loads the configuration again for a reload and keeps the parts that need a restart.

    A reload takes the policy (stages, enforcement, the stage sections, logging, the API token)
    and leaves the listeners, the database and the node id as they are, with a warning naming
    any such setting that changed. A bad file raises: the running policy stays.
    """

    def __init__(self, load: Callable[[], Settings], running: Callable[[], Settings]) -> None:
        self.load = load
        self.running = running
        #: why the last reload failed (shown by POST /api/reload), None if it worked
        self.last_error: str | None = None

    def __call__(self) -> Settings:
        from fsguard.service import logs
        from fsguard.call.pipeline import load_stage

        self.last_error = None
        try:
            new = self.load()
            for name in new.policy.stages:
                load_stage(name)
        except Exception as exc:
            self.last_error = str(exc)
            raise
        current = self.running()
        kept = [f"{section}.{f.name}" for section in RESTART_SECTIONS
                for f in dataclasses.fields(getattr(current, section))
                if getattr(getattr(new, section), f.name) != getattr(getattr(current, section), f.name)]
        kept += [f"{section}.{key}" for section, key in RESTART_KEYS
                 if getattr(getattr(new, section), key) != getattr(getattr(current, section), key)]
        for section in RESTART_SECTIONS:
            setattr(new, section, getattr(current, section))
        for section, key in RESTART_KEYS:
            setattr(getattr(new, section), key, getattr(getattr(current, section), key))
        if kept:
            log.warning("reload.restart_needed", settings=kept,
                        note="these settings take effect at the next restart")
        if new.logging != current.logging:
            logs.configure(new.logging)
        return new


def serve_hook(app: Any, server: Any) -> None:
    """Everything ``fsguard serve`` runs beside the call server."""
    from fsguard.service import systemd

    app.metrics.node(app.settings.node.id)
    app.metrics.watch_writer(app.writer)
    if server.on_reload is not None:
        server.on_reload = PolicyReloader(server.on_reload, lambda: app.settings)

    def count_reloads(event: str) -> None:
        if event in ("reloaded", "reload_failed"):
            app.metrics.reloads.labels(result="ok" if event == "reloaded" else "failed").inc()

    server.observers.append(count_reloads)
    if app.settings.http.enabled:
        start_http(app, server)
    systemd.install(app, server)


def start_http(app: Any, server: Any) -> Any:
    from fsguard.ops.admin import AdminServer

    try:
        http = AdminServer(app, server)
        http.start()
    except OSError as exc:
        raise CLIError(f"http.listen {app.settings.http.listen}: cannot listen: {exc.strerror or exc}") from None

    def stop_http(event: str) -> None:
        if event == "stopped":
            http.stop()

    server.observers.append(stop_http)
    return http


SERVE_HOOKS.append(serve_hook)


# ------------------------------------------------------- config example/show


def field_comments(cls: type) -> dict[str, list[str]]:
    """The ``#:`` comment lines above each field of a settings dataclass, read from its source."""
    comments: dict[str, list[str]] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        if line.startswith("    def ") or line.startswith("    @"):
            break
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        match = re.match(r"^    (\w+)\s*:", line)
        if match:
            comments[match.group(1)] = pending
        if text:
            pending = []
    return comments


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


def toml_value(value: Any) -> str:
    """A value as TOML (inline tables and arrays; strings as JSON-escaped basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{k if _BARE_KEY.match(str(k)) else json.dumps(str(k))} = {toml_value(v)}"
                          for k, v in value.items())
        return "{ " + items + " }"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return toml_value(dataclasses.asdict(value))
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


#: values `fsguard config show` never prints (a CRM URL may carry a password, its headers a token)
SECRETS = {("http", "token"), ("esl", "inbound_password"), ("routing", "crm_url"), ("routing", "crm_headers")}


def render_settings(settings: Settings, *, example: bool) -> str:
    """The settings as a TOML document: with ``example``, every key commented out with its
    default and its documentation; otherwise the values in effect (secrets hidden)."""
    out: list[str] = []
    if example:
        out += ["# fsguard configuration: every setting with its default.",
                "#",
                "# Generated by `fsguard config example`. Settings are commented out (#key = default):",
                "# remove the # of what you change. Each setting can also be given in the environment as",
                "# FSGUARD_<SECTION>_<KEY> (FSGUARD_ESL_LISTEN=0.0.0.0:8084), which wins over this file.",
                "# `fsguard config check` validates a file before a reload (systemctl reload runs it).",
                ""]
    for section in dataclasses.fields(settings):
        if section.name == "source":
            continue
        obj = getattr(settings, section.name)
        cls = type(obj)
        comments = field_comments(cls)
        out.append(f"[{section.name}]")
        doc = inspect.cleandoc(cls.__doc__ or "") if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        if example and doc:
            out += [f"# {line}".rstrip() for line in doc.splitlines()]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if example:
                if comments.get(f.name) or not out[-1].startswith("# "):
                    out.append("")   # a field without its own comment shares the one above it
                out += [f"# {line}" for line in comments.get(f.name, [])]
                if f.default_factory is socket.gethostname:  # type: ignore[comparison-overlap]
                    out.append(f"#{f.name} = \"<this host's name>\"")
                    continue
                if value is None:
                    out.append(f"#{f.name} =    (unset; type {hints[f.name]})")
                    continue
                out.append(f"#{f.name} = {toml_value(value)}")
            else:
                if value is None:
                    continue
                if (section.name, f.name) in SECRETS and value:
                    value = "<hidden>"
                elif (section.name, f.name) == ("database", "url") and "@" in value:
                    from sqlalchemy.engine import make_url

                    value = make_url(value).render_as_string(hide_password=True)
                out.append(f"{f.name} = {toml_value(value)}")
        out.append("")
    return "\n".join(out)


def cmd_config(ctx: Context) -> int:
    command = ctx.args.config_command
    if command == "example":
        print(render_settings(Settings(), example=True), end="")
        return 0
    if command == "show":
        settings = load_settings(ctx.args.config)   # a bad file raises ConfigError: exit 2 with the key
        print(render_settings(settings, example=False), end="")
        return 0
    return _check(ctx)


def _check(ctx: Context) -> int:
    """Every problem of the configuration, not only the first; and environment variables that
    look like settings but name none (a typo there is otherwise silently ignored)."""
    import os
    import sys

    from fsguard.config import ConfigError, unknown_variables
    from fsguard.call.pipeline import load_stage

    warnings = [f"{var}: names no setting (ignored); see 'fsguard config example' for the settings"
                for var in unknown_variables()]
    problems: list[str] = []
    settings = None
    try:
        settings = load_settings(ctx.args.config)
    except ConfigError as exc:
        problems += exc.problems
    if settings is not None:
        for name in settings.policy.stages:
            try:
                load_stage(name)
            except ConfigError as exc:   # an unknown stage: the message names the key
                problems += exc.problems
            except ImportError as exc:
                problems.append(f"policy.stages: {name}: {exc}")
    source = str(settings.source) if settings and settings.source else \
        (ctx.args.config or os.environ.get("FSGUARD_CONFIG") or "defaults and environment")
    stages = settings.policy.stages if settings else []
    shadow = [s for s in stages if settings and not settings.policy.enforced(s)]
    if ctx.args.json:
        print_json({"ok": not problems, "source": source, "problems": problems, "warnings": warnings,
                        "stages": stages, "shadow": shadow})
    else:
        for warning in warnings:
            print(f"fsguard: warning: {warning}", file=sys.stderr)
        for problem in problems:
            print(f"fsguard: configuration error: {problem}", file=sys.stderr)
        if not problems:
            print(f"configuration OK ({source}): stages {' -> '.join(stages) or '(none)'}"
                  + (f"; shadow mode for {', '.join(shadow)}" if shadow else ""))
    if problems:
        # a stage that cannot load is a problem of the code or the install (1); any other is the file's (2)
        return 1 if all(p.startswith("policy.stages: ") for p in problems) and settings is not None else 2
    return 0


#: the FreeSWITCH reference configuration a user copies (conf/freeswitch/README.rst)
FREESWITCH_FILES = ("dialplan/public_fsguard.xml", "dialplan/default_fsguard_outbound.xml", "dialplan/queues.xml",
                    "autoload_configs/callcenter.conf.xml", "autoload_configs/event_socket.conf.xml")


def shipped_conf() -> Path | None:
    """Where the shipped conf/ is: <prefix>/share/fsguard/conf of an installed wheel (found
    through the distribution's file list, so a --user install finds its own), else the checkout's."""
    from importlib import metadata

    try:
        files = metadata.distribution("fsguard").files or []
    except metadata.PackageNotFoundError:
        files = []
    for entry in files:
        posix = entry.as_posix()
        if posix.endswith("share/fsguard/conf/freeswitch/dialplan/public_fsguard.xml"):
            found = Path(str(entry.locate())).resolve()
            return found.parents[2]
    checkout = Path(__file__).resolve().parents[3] / "conf"
    return checkout if (checkout / "freeswitch").is_dir() else None


def cmd_freeswitch(ctx: Context) -> int:
    """Write the FreeSWITCH snippets into DIR, the socket pointed at this node's esl.listen."""
    import sys

    args = ctx.args
    source = shipped_conf()
    if source is None:
        raise CLIError("the FreeSWITCH configuration is not installed with this fsguard (conf/freeswitch)")
    listen = args.listen or ctx.settings.esl.listen
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "", "[::]", "::"):
        raise CLIError(f"esl.listen {listen} is every address: give the address FreeSWITCH connects to "
                           "with --listen HOST:PORT")
    inbound_port = ctx.settings.esl.inbound.rpartition(":")[2]
    target = Path(args.dir)
    written, kept = [], []
    for name in FREESWITCH_FILES:
        text = (source / "freeswitch" / name).read_text(encoding="utf-8")
        # the lab's variables, given this node's values: the socket fsguard listens on, and the
        # port of the inbound Event Socket fsguard uses for api commands (esl.inbound)
        text = text.replace("$${fsguard_socket}", f"{host}:{port}").replace("$${lab_esl_port}", inbound_port)
        path = target / name
        if path.exists() and not args.force:
            kept.append(str(path))
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None
        written.append(str(path))
    if args.json:
        print_json({"written": written, "kept": kept, "socket": f"{host}:{port} async full"})
    else:
        for path in written:
            print(f"wrote {path}")
        for path in kept:
            print(f"kept {path} (exists; --force replaces it)", file=sys.stderr)
        print(f"the socket application connects to {host}:{port}; see conf/freeswitch/README.rst for where "
              "each file goes")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("config", help="the configuration: example, check, show")
    csub = p.add_subparsers(dest="config_command", required=True)
    csub.add_parser("example", help="every setting with its default and documentation (TOML)")
    check = csub.add_parser("check", help="validate the configuration file (before a reload): every problem, and "
                                          "FSGUARD_* variables that name no setting")
    check.add_argument("--json", action="store_true",
                       help='print {"ok", "source", "problems", "warnings", "stages", "shadow"}')
    csub.add_parser("show", help="the settings in effect, secrets hidden (TOML)")
    fs = csub.add_parser("freeswitch", help="write the FreeSWITCH reference configuration (dialplan, "
                                            "callcenter, event_socket) into DIR")
    fs.add_argument("dir", metavar="DIR", help="where to write (dialplan/ and autoload_configs/ are made in it)")
    fs.add_argument("--listen", metavar="HOST:PORT",
                    help="the address FreeSWITCH's socket application connects to (default: esl.listen)")
    fs.add_argument("--force", action="store_true", help="replace files that exist")
    fs.add_argument("--json", action="store_true", help='print {"written", "kept", "socket"}')
    fs.set_defaults(func=cmd_freeswitch)
    p.set_defaults(func=cmd_config)
