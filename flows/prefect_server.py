"""A shared local Prefect server for this user: started once, reused by later commands, stopped when idle.

Prefect's ephemeral API (a server each process starts and stops) costs every
command ~7–12 s before its flow runs. By default a flow command instead uses one
local Prefect server per user and Prefect version, found through a state file and
a health check, and started — detached, in its own session, so it never dies with
the command that started it — by the first command that finds none:

- it listens on a free loopback port, keeps its runs in its own SQLite database
  under the state folder (``$GIGASEG_STATE_DIR``, else ``$XDG_STATE_HOME/gigaseg``,
  else ``~/.local/state/gigaseg``) and serves the Prefect UI at its URL;
- every command that uses it holds a shared lock (a lease) on ``lease.lock``
  until it exits, however it exits; the server stops itself once nobody has held
  a lease for ``$GIGASEG_PREFECT_IDLE_MINUTES`` (default
  :data:`DEFAULT_IDLE_MINUTES`; 0: never), or on ``gigaseg server stop``;
- starting and stopping are serialised by ``start.lock``: two commands started
  together get one server, and a server that decides to stop does so only while
  no command is between finding it and taking its lease.

The user's own API always wins: with ``PREFECT_API_URL`` set (environment, Prefect
profile or ``prefect.toml``) nothing is started. ``GIGASEG_PREFECT_SERVER=ephemeral``
goes back to Prefect's ephemeral API, private to the command (DESIGN.md,
invariant 10: it never serves or outlives another command).

Run ``python -m flows.prefect_server serve STATE_DIR IDLE_MINUTES`` is the server
process itself; commands start it, nobody needs to.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

from pipeline.errors import InputError

MODE_ENV = "GIGASEG_PREFECT_SERVER"
"""``shared`` (default): the user's shared local server; ``ephemeral``: Prefect's per-command API."""
STATE_DIR_ENV = "GIGASEG_STATE_DIR"
"""Where the shared server keeps its state file, locks, log and database."""
IDLE_ENV = "GIGASEG_PREFECT_IDLE_MINUTES"
"""Minutes without any command before the shared server stops itself (0: never)."""
DEFAULT_IDLE_MINUTES = 30.0
START_TIMEOUT_S = 180.0
"""How long a command waits for a server it started to answer (a loaded machine is slow)."""
POLL_S = 0.5

_lease: IO[str] | None = None
"""This process's lease on the shared server (held until the process exits)."""


def server_folder() -> Path:
    """The state folder of the shared server for the installed Prefect version (one database per version)."""
    from importlib.metadata import version

    base = os.environ.get(STATE_DIR_ENV)
    if not base:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = str(Path(xdg) / "gigaseg")
    return Path(base).expanduser() / f"prefect-server-{version('prefect')}"


def idle_minutes() -> float:
    """``$GIGASEG_PREFECT_IDLE_MINUTES`` or the default."""
    text = os.environ.get(IDLE_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_IDLE_MINUTES
    except ValueError:
        raise InputError(f"{IDLE_ENV}={text!r}: not a number of minutes") from None
    if value < 0:
        raise InputError(f"{IDLE_ENV}={text!r}: must be >= 0 (0: never stop when idle)")
    return value


def use_prefect_api() -> str | None:
    """The Prefect API this process's flows report to; call before a flow runs (idempotent).

    The user's ``PREFECT_API_URL`` (environment, profile or ``prefect.toml``) as is;
    else, by default, the shared local server (found or started, then leased until
    this process exits); ``None`` with ``GIGASEG_PREFECT_SERVER=ephemeral`` (Prefect
    starts its own ephemeral API for this process). On the servers gigaseg picks,
    flow-run heartbeats are off unless the user set their frequency.
    """
    from prefect.settings import get_current_settings

    given = get_current_settings().api.url
    if given:
        return given
    mode = os.environ.get(MODE_ENV, "shared").strip().lower() or "shared"
    if mode not in ("shared", "ephemeral"):
        raise InputError(f"{MODE_ENV}={mode!r}: expected 'shared' or 'ephemeral'")
    url = None
    if mode == "shared":
        url = acquire(server_folder(), idle_minutes())
        os.environ["PREFECT_API_URL"] = url  # for the processes this one starts
    _settle_settings(url)
    return url


def _settle_settings(url: str | None) -> None:
    """Prefect read its settings at import: give them ``url`` and turn heartbeats off unless asked.

    Flow-run heartbeats only matter to an automation that marks silent runs ``Crashed``,
    which a self-hosted server has only if someone created it; the shared local server
    and the ephemeral API have none. Each sync flow run still waits at its end for the
    heartbeat thread's current one-second sleep (bench/RESULTS.md, "Prefect's heartbeat
    wait"). A frequency the user set (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``, a profile or
    ``prefect.toml``) is kept: ``set_defaults`` overrides only unset values.

    One copy of the settings Prefect holds, not a reload of the environment and
    profiles, which parses every setting twice.
    """
    from prefect import context

    root = context.GLOBAL_SETTINGS_CONTEXT
    settings = root.settings.copy_with_update(
        updates={"api.url": url} if url else None, set_defaults={"flows.heartbeat_frequency": None}
    )
    context.GLOBAL_SETTINGS_CONTEXT = context.SettingsContext(profile=root.profile, settings=settings)


def _lock(path: Path, mode: int) -> IO[str]:
    handle = open(path, "a+")  # noqa: SIM115  (held beyond this function)
    fcntl.flock(handle, mode)
    return handle


def _try_lock(path: Path, mode: int) -> IO[str] | None:
    handle = open(path, "a+")  # noqa: SIM115
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def read_state(folder: Path) -> dict | None:
    """The state file of a server that started in ``folder`` (maybe no longer running)."""
    try:
        return json.loads((folder / "server.json").read_text())
    except (OSError, ValueError):
        return None


def healthy_url(folder: Path, timeout_s: float = 5.0) -> str | None:
    """The API URL of the server in ``folder`` if it answers its health check, else None."""
    state = read_state(folder)
    if not state:
        return None
    try:
        with urllib.request.urlopen(f"{state['url']}/health", timeout=timeout_s) as response:
            return state["url"] if response.status == 200 else None
    except (OSError, ValueError, KeyError):
        return None


def acquire(folder: Path, idle: float) -> str:
    """The shared server's API URL, started if none answers; this process holds a lease on it until exit."""
    global _lease
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # its database: this user's runs
    with _lock(folder / "start.lock", fcntl.LOCK_EX):
        url = healthy_url(folder) or _start(folder, idle)
        if _lease is None:
            _lease = _lock(folder / "lease.lock", fcntl.LOCK_SH)
    return url


def _start(folder: Path, idle: float) -> str:
    """Start a detached server process (own session) and wait until it answers."""
    import flows

    root = str(Path(flows.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_")}
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    (folder / "server.json").unlink(missing_ok=True)
    log = open(folder / "server.log", "ab")  # noqa: SIM115
    with log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.prefect_server", "serve", str(folder), str(idle)],
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # not in the command's process group: Ctrl-C / its end leave it be
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = read_state(folder)
        if state and state.get("pid") == proc.pid and (url := healthy_url(folder)):
            return url
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    if proc.poll() is None:
        proc.terminate()
    tail = (folder / "server.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the shared Prefect server did not start (log {folder / 'server.log'}):\n{tail}")


def stop(folder: Path, force: bool = False, timeout_s: float = 30.0) -> str:
    """Stop the shared server in ``folder``; refuse while a command holds a lease unless ``force``."""
    with _lock(folder / "start.lock", fcntl.LOCK_EX):
        state = read_state(folder)
        if not state or not _alive(state.get("pid")):
            (folder / "server.json").unlink(missing_ok=True)
            return "no shared Prefect server is running"
        free = _try_lock(folder / "lease.lock", fcntl.LOCK_EX)
        if free is None and not force:
            raise InputError("the shared Prefect server is in use by running commands (--force stops it)")
        if free is not None:
            free.close()
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(state["pid"]):
            os.kill(state["pid"], signal.SIGKILL)
        (folder / "server.json").unlink(missing_ok=True)
    return f"stopped the shared Prefect server at {state['url']} (pid {state['pid']})"


def _alive(pid: object) -> bool:
    """Whether process ``pid`` runs (an exited one not yet reaped by its parent counts as gone)."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): signal 0 is all we know


def serve(folder: Path, idle: float) -> int:
    """The server process: Prefect's API + UI on a free loopback port until idle or told to stop."""
    from flows.prefect_server_app import create_app, listening_socket

    sock = listening_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    os.environ.update(
        {
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder / 'prefect.db'}",
            "PREFECT_UI_API_URL": url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
        }
    )
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app, factory=True, log_level="error", lifespan="on"))
    watcher = threading.Thread(target=_watch, args=(server, folder, url, idle * 60.0), daemon=True)
    watcher.start()
    try:
        server.run(sockets=[sock])
    finally:
        state = read_state(folder)
        if state and state.get("pid") == os.getpid():
            (folder / "server.json").unlink(missing_ok=True)
    return 0


def _watch(server, folder: Path, url: str, idle_s: float) -> None:
    """Publish the state file once the server answers; then stop it after ``idle_s`` with no lease held."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    state = {"url": url, "pid": os.getpid(), "started": time.time()}
    tmp = folder / f"server.json.{os.getpid()}"
    tmp.write_text(json.dumps(state))
    tmp.replace(folder / "server.json")
    idle_since = time.monotonic()
    while not server.should_exit:
        time.sleep(POLL_S)
        held = _try_lock(folder / "lease.lock", fcntl.LOCK_EX)
        if held is None:  # a command is using the server
            idle_since = time.monotonic()
            continue
        held.close()
        if idle_s <= 0 or time.monotonic() - idle_since < idle_s:
            continue
        start = _try_lock(folder / "start.lock", fcntl.LOCK_EX)
        if start is None:  # a command is finding or starting a server right now
            continue
        lease = _try_lock(folder / "lease.lock", fcntl.LOCK_EX)
        if lease is not None:  # still nobody: stop; commands wait on start.lock until it is gone
            (folder / "server.json").unlink(missing_ok=True)
            server.should_exit = True
            # Both locks stay held (these handles live on) until this process exits.
            _watch.held = (start, lease)  # type: ignore[attr-defined]
            return
        start.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.prefect_server serve STATE_DIR IDLE_MINUTES`` (started by commands)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "serve":
        print("usage: python -m flows.prefect_server serve STATE_DIR IDLE_MINUTES", file=sys.stderr)
        return 2
    return serve(Path(args[1]), float(args[2]))


if __name__ == "__main__":
    sys.exit(main())
