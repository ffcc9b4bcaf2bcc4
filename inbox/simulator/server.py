"""Serving the simulator with uvicorn, from the command line or from a test's thread."""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from inbox.simulator.app import create_app
from inbox.simulator.engine import Options, Simulator


def uvicorn_config(
    sim: Simulator, host: str = "127.0.0.1", port: int = 5001, log_level: str = "warning"
) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(sim),
        host=host,
        port=port,
        # h11 on purpose: fault injection cuts connections through its transport.
        http="h11",
        ws="none",
        lifespan="on",
        log_level=log_level,
        access_log=False,
        # Thousands of concurrent streams in one process: no concurrency cap, a deep backlog.
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Options()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--scenarios", type=Path, default=None, help="directory of scenario files")
    parser.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout)
    parser.add_argument("--ping-interval", type=float, default=defaults.ping_interval)
    parser.add_argument("--resume-delay", type=float, default=defaults.resume_delay)
    parser.add_argument("--time-scale", type=float, default=defaults.time_scale)
    parser.add_argument("--timeout-scale", type=float, default=defaults.timeout_scale)
    parser.add_argument("--global-timeout", type=float, default=defaults.global_timeout)
    parser.add_argument("--record", action="store_true", help="keep every exchange (tests only)")
    parser.add_argument("--log-level", default="info")


def options_from(args: argparse.Namespace) -> Options:
    return Options(
        idle_timeout=args.idle_timeout,
        ping_interval=args.ping_interval,
        resume_delay=args.resume_delay,
        time_scale=args.time_scale,
        timeout_scale=args.timeout_scale,
        global_timeout=args.global_timeout,
        record=args.record,
    )


def run(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    sim = Simulator(scenarios_dir=args.scenarios, options=options_from(args))
    log = logging.getLogger("inbox.simulator")
    log.info("Dify simulator on http://%s:%d/v1 with %d apps:", args.host, args.port, len(sim.apps))
    for app in sim.apps.values():
        log.info("  %-22s %-14s key %s", app.name, app.mode, app.api_key)
    config = uvicorn_config(sim, args.host, args.port, log_level=args.log_level)
    uvicorn.Server(config).run()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dify_simulator", description="A Dify-compatible server for demos and tests."
    )
    add_arguments(parser)
    run(parser.parse_args(argv))
