"""`conch`: run one member, configured like etcd (flags, ETCD_* variables, --config-file)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from conch import ETCD_COMPAT_VERSION, __version__
from conch.server import config as config_mod
from conch.server.config import Config, ConfigError

log = logging.getLogger("conch")

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "dpanic": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


async def serve(cfg: Config, ready: asyncio.Event | None = None) -> int:
    """Run a member until SIGTERM/SIGINT; returns the signal number that stopped it (or 0)."""
    from conch import embed

    running = await embed.start(cfg)
    member = running.member
    log.info(
        "conch %s (etcd %s API) member %x of cluster %x serving clients on %s",
        __version__, ETCD_COMPAT_VERSION, member.member_id, member.cluster_id,
        ",".join(cfg.listen_client_urls),
    )
    # etcd prints this line once it serves; scripts and tests wait for it.
    print("ready to serve client requests", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    got: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: int) -> None:
        got.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if ready is not None:
        ready.set()
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(running.removed.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in waits:
        w.cancel()
    log.info("received %s, shutting down", signal.Signals(got[0]).name if got else "stop")
    await running.close()
    return got[0] if got else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "-help"):
        print(config_mod.usage())
        return 0
    if args and args[0] in ("--version", "-version"):
        print(f"conch Version: {__version__}\netcd API Version: {ETCD_COMPAT_VERSION}")
        return 0
    try:
        cfg = config_mod.load(args)
    except ConfigError as exc:
        print(f"conch: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=_LEVELS.get(cfg.log_level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from conch import failpoints
    from conch.server.bootstrap import StartupError

    try:
        # gofail's GOFAIL_HTTP: failpoints armed at run time, from before the member opens.
        fp_http = failpoints.serve_http_from_env()
    except (OSError, ValueError) as exc:
        print(f"conch: CONCH_FAILPOINTS_HTTP: {exc}", file=sys.stderr)
        return 1
    if fp_http is not None:
        log.warning("failpoint control listening on %s:%d", *fp_http.server_address[:2])
    try:
        sig = asyncio.run(serve(cfg))
    except (ConfigError, StartupError) as exc:
        log.critical("%s", exc)
        print(f"conch: {exc}", file=sys.stderr)
        return 1
    if sig:
        # Exit the way etcd does: by the signal itself (status 143 for SIGTERM under systemd).
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
