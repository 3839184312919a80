"""The ``tcia-mirror`` command: a thin shell over the library.

Exit codes: 0 done; 1 finished but incomplete or failing verification; 2 bad usage or input;
3 the archive stopped the run; 130 interrupted (progress kept).
"""

from __future__ import annotations

import argparse
import contextvars
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import anyio

from tcia_mirror import __version__
from tcia_mirror.config import ENV, client_config, read_config_file, resolve
from tcia_mirror.errors import InputError, TciaMirrorError, first_error, redact, url_passwords
from tcia_mirror.sources.nbia.clientconfig import validate_param_pairs
from tcia_mirror.sources.nbia.profiles import available_profiles

EXIT_INTERRUPTED = 130
_SECRET_OPTIONS = ("--api-key", "--password")
_ARGV: contextvars.ContextVar[Sequence[str] | None] = contextvars.ContextVar(
    "tcia_mirror_argv", default=None
)


def _secret_option(name: str) -> bool:
    """``--api-key``, ``--password``, a prefix argparse may take for one (``--pass``), or an
    unknown option that looks like one (``--apikey``, ``--passwd``)."""
    if name != "--api" and len(name) >= 3 and any(o.startswith(name) for o in _SECRET_OPTIONS):
        return True
    return any(word in name.lower() for word in ("key", "pass", "secret"))


def argv_secrets(argv: Sequence[str]) -> list[str]:
    """Secrets on a command line argparse may have refused: a plain scan, not a parse.

    The values of ``--api-key`` and ``--password`` (``--opt VALUE`` and ``--opt=VALUE``, and
    the prefixes argparse accepts for them), URL passwords, the secrets of the environment and
    of a ``--config`` file.
    """
    found: list[str | None] = [os.environ.get(ENV["api_key"]), os.environ.get(ENV["password"])]
    tokens = list(argv)
    for i, token in enumerate(tokens):
        found.extend(url_passwords(token))
        name, eq, value = token.partition("=")
        if not name.startswith("--"):
            continue
        nxt = value if eq else (tokens[i + 1] if i + 1 < len(tokens) else None)
        if _secret_option(name):
            found.append(nxt)
        elif name == "--config" and nxt:
            try:
                config = read_config_file(nxt)
            except (TciaMirrorError, OSError):
                continue
            found.extend(str(config[k]) for k in ("api_key", "password") if config.get(k))
    return [s for s in found if s]


class _Parser(argparse.ArgumentParser):
    """One-line usage errors (exit 2), no usage dump, no secret echoed."""

    def error(self, message: str) -> NoReturn:
        argv = _ARGV.get()
        secrets = argv_secrets(sys.argv[1:] if argv is None else argv)
        self.exit(2, f"{self.prog}: error: {redact(message, secrets)} (see --help)\n")


def _connection_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument(
        "--api",
        metavar="PROFILE",
        help=f"API profile: {', '.join(available_profiles())} or a .toml file (default nbia-v4)",
    )
    g.add_argument("--base-url", metavar="URL", help="override the profile's base URL")
    g.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="endpoint of every IDC bucket of .s5cmd manifests (env TCIA_S3_ENDPOINT)",
    )
    g.add_argument(
        "--proxy",
        metavar="URL",
        help="HTTP proxy for every request, http://[user:password@]host:port (env TCIA_PROXY; "
        "else HTTPS_PROXY/HTTP_PROXY; NO_PROXY honoured)",
    )
    g.add_argument("--api-key", metavar="KEY", help="API key (env TCIA_API_KEY)")
    g.add_argument("--user", metavar="NAME", help="user for OAuth profiles (env TCIA_USER)")
    g.add_argument("--password", metavar="PW", help="password (env TCIA_PASSWORD)")
    g.add_argument("--token-url", metavar="URL", help="OAuth token endpoint (env TCIA_TOKEN_URL)")
    g.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="tries per request before giving up (default 6; env TCIA_RETRIES)",
    )
    g.add_argument("--config", metavar="FILE", help="TOML file with any of the settings above")
    return p


def build_parser() -> argparse.ArgumentParser:
    conn = _connection_options()
    parser = _Parser(
        prog="tcia-mirror",
        description="Mirror collections of The Cancer Imaging Archive: fast, resumable, verified.",
    )
    parser.add_argument("--version", action="version", version=f"tcia-mirror {__version__}")
    sub: Any = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    q = sub.add_parser("query", parents=[conn], help="print the archive's answer to one endpoint")
    q.add_argument("endpoint", metavar="ENDPOINT")
    q.add_argument("params", nargs="*", metavar="KEY=VALUE")
    q.add_argument("--format", choices=["json", "csv", "xml", "html"], help="response format")
    q.add_argument("--metadata", action="store_true", help="the endpoint's /metadata description")
    q.add_argument("-o", "--output", metavar="FILE", help="write the body to FILE (binary answers)")
    q.set_defaults(func=_cmd_query)

    s = sub.add_parser("simulate", help="run the archive simulator on loopback")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="0 picks a free port")
    s.add_argument("--preset", choices=["test", "demo", "bench"], default="demo")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    s.add_argument("--bandwidth", type=float, default=None, help="bytes/s cap per response")
    s.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 500/502/503")
    s.add_argument("--error-burst", type=int, default=1, metavar="N", help="5xx come N in a row")
    s.add_argument("--rate-limit-rate", type=float, default=0.0, help="fraction answered 429")
    s.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on 429")
    s.add_argument(
        "--drop-rate", type=float, default=0.0, help="fraction of images dropped mid-body"
    )
    s.add_argument("--truncate-rate", type=float, default=0.0, help="fraction of ZIPs cut short")
    s.add_argument("--html-error-rate", type=float, default=0.0, help="fraction of ZIPs as HTML")
    s.add_argument("--hostile", action="store_true", help="hostile ZIP entry names")
    s.add_argument("--token-ttl", type=float, default=7200.0, help="OAuth token lifetime, seconds")
    s.set_defaults(func=_cmd_simulate)

    from tcia_mirror.cli.commands import add_engine_commands  # noqa: PLC0415 - keeps this module small

    add_engine_commands(sub, conn)
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return resolve(vars(args))


async def _query(args: argparse.Namespace) -> tuple[bytes, str]:
    settings = _settings(args)
    params = validate_param_pairs(args.params)
    cfg = client_config(settings)
    spec = cfg.profile.endpoint(args.endpoint)  # unknown endpoint: exit 2 before any request
    spec.wire_params(params)  # missing required parameter: exit 2 before any request
    if args.metadata and not cfg.profile.metadata:
        raise InputError(
            f"API profile {cfg.profile.name} has no /metadata descriptions (tcia-v3 has)"
        )
    from tcia_mirror.sources.nbia.client import ArchiveClient  # noqa: PLC0415 - status starts without aiohttp

    async with ArchiveClient(cfg) as client:
        resp = await client.raw(spec.name, params, fmt=args.format, metadata=args.metadata)
    return resp.body, spec.kind


def _cmd_query(args: argparse.Namespace) -> int:
    body, kind = anyio.run(_query, args)
    if args.output:
        try:
            with open(args.output, "wb") as fh:
                fh.write(body)
        except OSError as exc:
            raise InputError(f"cannot write {args.output}: {exc.strerror}") from None
        print(f"wrote {len(body)} bytes to {args.output}", file=sys.stderr)
        return 0
    if kind != "rows" and sys.stdout.isatty():
        raise InputError("this endpoint answers binary data; use --output FILE")
    sys.stdout.buffer.write(body)
    if body and not body.endswith(b"\n") and kind == "rows":
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from tcia_mirror.testing.simulator import Faults, serve  # noqa: PLC0415 - the simulator is not needed otherwise

    faults = Faults(
        latency=args.latency,
        bandwidth=args.bandwidth,
        error_rate=args.error_rate,
        error_burst=args.error_burst,
        rate_limit_rate=args.rate_limit_rate,
        retry_after=args.retry_after,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        html_error_rate=args.html_error_rate,
        hostile=args.hostile,
        seed=args.seed,
    )

    def _print(line: str) -> None:
        print(line, flush=True)

    async def _serve() -> None:
        await serve(
            args.preset,
            host=args.host,
            port=args.port,
            seed=args.seed,
            faults=faults,
            token_ttl=args.token_ttl,
            print_fn=_print,
        )

    anyio.run(_serve)
    return 0


def _secrets(args: argparse.Namespace) -> tuple[str | None, ...]:
    """Every secret the user gave, by flag, environment or config file."""
    try:
        settings = resolve(vars(args))
    except TciaMirrorError:
        settings = {}
    from tcia_mirror.sources.proxy import ProxyChoice  # noqa: PLC0415 - on an error only

    try:
        proxies = ProxyChoice.from_settings(settings.get("proxy"), warn=False).secrets()
    except TciaMirrorError:  # a malformed proxy: its URL's password is redacted as any URL's
        proxies = ()
    return (
        settings.get("api_key"),
        settings.get("password"),
        getattr(args, "api_key", None),
        getattr(args, "password", None),
        *proxies,
    )


def run(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    token = _ARGV.set(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    finally:
        _ARGV.reset(token)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        try:
            return func(args)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
    except TciaMirrorError as exc:
        print(f"tcia-mirror: error: {redact(str(exc), _secrets(args))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "tcia-mirror: interrupted; progress is kept, resume with the same command",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a local resource we did not expect to fail (port, folder ...)
        where = f": {exc.filename}" if exc.filename else ""
        message = redact(f"{exc.strerror or exc}{where}", _secrets(args))
        print(f"tcia-mirror: error: {message}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv)
