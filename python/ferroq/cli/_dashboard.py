"""``ferroq dashboard``: the live web dashboard (``pip install 'ferroq[web]'``), served by
uvicorn on 127.0.0.1 unless told otherwise (and then only with credentials)."""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from ._common import CliError, Exit, db_options, open_queue, option, settings


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _credentials(auth: str | None, token_file: str | None) -> Any:
    from ..errors import InvalidArgument
    from ..web import Credentials

    if auth and token_file:
        raise CliError("give --auth or --token-file, not both", Exit.USAGE)
    try:
        if auth:
            return Credentials.parse(auth)
        if token_file:
            try:
                with open(token_file, encoding="utf-8") as f:
                    return Credentials.from_token(f.read())
            except OSError as e:
                raise CliError(f"cannot read --token-file {token_file}: {e.strerror}", Exit.USAGE) from None
    except InvalidArgument as e:
        raise CliError(str(e), Exit.USAGE) from None
    return None


@click.command()
@db_options
@option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback needs --auth or --token-file.",
)
@option("--port", type=click.IntRange(0, 65535), default=8555, show_default=True, help="Port to listen on.")
@option("--read-only", is_flag=True, help="Show everything, change nothing (actions answer 403).")
@option("--auth", metavar="USER:PASS", default=None, help="Require HTTP Basic credentials.")
@option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Require this file's token (Authorization: Bearer, or as the Basic password).",
)
@option("--root-path", default="", help="The path prefix a reverse proxy serves the dashboard under (e.g. /ferroq).")
@option("--hide-args", is_flag=True, help="Never show task arguments or results (payloads that hold secrets).")
@click.pass_context
def dashboard(
    ctx: click.Context,
    db: str | None,
    queue_name: str | None,
    host: str,
    port: int,
    read_only: bool,
    auth: str | None,
    token_file: str | None,
    root_path: str,
    hide_args: bool,
) -> None:
    """Serve the live web dashboard of the queue: overview, groups, tasks, workers, events,
    updated live; retry/cancel/purge and group controls unless --read-only."""
    try:
        import uvicorn

        from ..web import create_app
    except ImportError as e:
        raise CliError(f"the dashboard needs the web extra: pip install 'ferroq[web]' ({e})", Exit.FAILED) from None
    credentials = _credentials(auth, token_file)
    if not _loopback(host) and credentials is None:
        raise CliError(
            f"refusing to serve on {host} without --auth or --token-file (anyone who can reach it "
            f"could read and change the queue); bind 127.0.0.1 or give credentials",
            Exit.USAGE,
        )
    if root_path and not root_path.startswith("/"):
        raise CliError("--root-path must start with / (e.g. /ferroq)", Exit.USAGE)
    s = settings(ctx, db, queue_name)
    q = open_queue(s)
    app = create_app(q, read_only=read_only, auth=credentials, hide_args=hide_args)
    click.echo(
        f"ferroq dashboard of {q.path} (queue {q.name!r}) on http://{host}:{port}{root_path.rstrip('/')}/"
        f"{' (read-only)' if read_only else ''}",
        err=True,
    )
    config = uvicorn.Config(
        app, host=host, port=port, root_path=root_path.rstrip("/"), log_level="warning", timeout_graceful_shutdown=5
    )
    _server(config, app.state.dashboard.tail).run()


def _server_class() -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """Ends the open event streams cleanly on SIGTERM/SIGINT: uvicorn waits for open
        responses, and a stream would otherwise run to its 60 s end (or be cut)."""

        def __init__(self, config: Any, tail: Any) -> None:
            super().__init__(config)
            self.tail = tail

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.tail.end_streams()
            super().handle_exit(sig, frame)

    return Server


def _server(config: Any, tail: Any) -> Any:
    """The server; its class is made on first use (uvicorn is an optional dependency)."""
    return _server_class()(config, tail)
