"""`vslm report RUN --serve` and `--watch`: the run's report redrawn as the run advances.

`LiveReport` polls the modification times and sizes of the run's files (config, metrics, probes, summary,
samples, checkpoints) and redraws RUN/report.html when they change; it stops redrawing once the run has
reached its last step (`train.steps`) and its files have been quiet for `settle` seconds (the trainer
writes its last checkpoint and the CLI its samples after the last metrics line).

`serve` hands the page out over HTTP on 127.0.0.1 only (never another interface): `/` is the report with
a small script added that long-polls `/version?since=N` (answered as soon as the report's generation
counter passes N, or after `HOLD_S`) and reloads the page when the counter moves, so an unchanged page
never flickers. The report file on disk keeps no script (html.py); with `watch` (no server) it carries a
`<meta http-equiv="refresh">` while the run is unfinished, dropped from the final one.

No torch: a report package module (the no-torch leaf of .importlinter).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from vslm.errors import UsageError
from vslm.files import in_use
from vslm.report.run_report import REPORT, render
from vslm.report.runs import CONFIG, METRICS, PROBES, SAMPLES, SUMMARY, RunFiles, read_run

STOPPED_AFTER = 30.0  # seconds without a write and without the folder's lock: a run stopped or killed (a resume
# takes the lock only once its corpus and model are ready)
HOST = "127.0.0.1"  # localhost only: the report shows a run's config and samples to whoever can reach it
WATCHED = (CONFIG, METRICS, PROBES, SUMMARY, SAMPLES)
HOLD_S = 20.0  # how long /version holds a request when nothing changes (long polling)
FILE_REFRESH_S = 10  # --watch: the file reloads itself this often while the run is unfinished

# Added to the served page only. It asks for the next version; the server answers when the report changes
# (or after HOLD_S with the same one), so the page reloads within a moment of a redraw and never otherwise.
# It stops asking once the run is finished and the page shows the final version.
RELOAD_SCRIPT = """<script>
(function () {
  const shown = %d;
  function poll(delay) {
    setTimeout(() => fetch("/version?since=" + shown, {cache: "no-store"})
      .then(r => r.json())
      .then(v => { if (v.version !== shown) location.reload(); else if (!v.finished) poll(0); })
      .catch(() => poll(5000)), delay);
  }
  poll(0);
})();
</script>"""


def fingerprint(folder: Path) -> tuple:
    """(name, mtime_ns, size) of every file the report reads, and of the checkpoints: equal when nothing changed."""
    paths = [folder / name for name in WATCHED] + sorted((folder / "checkpoints").glob("*.safetensors"))
    out = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:  # absent, or removed between the glob and the stat (the trainer prunes checkpoints)
            continue
        out.append((path.name, stat.st_mtime_ns, stat.st_size))
    return tuple(out)


def last_step(run: RunFiles) -> int:
    return int(run.metrics[-1].get("step", 0)) if run.metrics else 0


def reached_end(run: RunFiles) -> bool:
    """Whether the run has logged its last planned step (config train.steps)."""
    planned = run.config.get("train", {}).get("steps")
    return bool(run.metrics) and isinstance(planned, int) and last_step(run) >= planned


class LiveReport:
    """The report of one run folder, redrawn by `poll` when the run's files change.

    `html` and `version` (1 for the first drawing, +1 at each redraw) are read by the server's threads;
    `changed` is notified at each redraw and when the report is final."""

    def __init__(self, folder: Path, settle: float = 10.0, file_refresh: int | None = None):
        self.folder = Path(folder)
        self.settle = settle
        self.file_refresh = file_refresh  # seconds of a meta refresh in the file while unfinished (watch)
        self.changed = threading.Condition()
        self.version = 0
        self.html = ""
        self.step = 0
        self.final = False
        self._seen: tuple | None = None
        self._at_end = False
        self._logged = False
        self.poll()

    def stopped(self) -> bool:
        """A run that started (its config written, or steps logged), not at its last step, wrote nothing for
        STOPPED_AFTER seconds, and whose folder's lock no process holds: stopped or killed."""
        return (self._logged and not self._at_end and self._seen is not None
                and self._quiet(self._seen, STOPPED_AFTER) and not in_use(self.folder))

    def poll(self, final: bool = False) -> bool:
        """Redraw if the run's files changed since the last look; True when it did. Once the run is at its
        last step and its files have been quiet for `settle` seconds the report is final: no more redraws
        (`final`: now, wherever the run is)."""
        if self.final:
            return False
        if final:
            self._draw(final=True)
            return True
        seen = fingerprint(self.folder)
        if seen != self._seen:
            self._seen = seen
            run = read_run(self.folder, warn=lambda line: None)  # a line being written: read again next time
            # config.toml is written under the run's lock: from then on, no lock means no process will log
            self._at_end, self._logged = reached_end(run), bool(run.metrics) or (self.folder / CONFIG).is_file()
            self._draw(run, final=self._at_end and self._quiet(seen))
            return True
        if self._at_end and self._quiet(seen):
            self._draw(final=True)
        return False

    def _quiet(self, seen: tuple, seconds: float | None = None) -> bool:
        newest = max((mtime for _, mtime, _ in seen), default=0) / 1e9
        return time.time() - newest >= (self.settle if seconds is None else seconds)

    def _draw(self, run: RunFiles | None = None, final: bool = False) -> None:
        run = run or read_run(self.folder, warn=lambda line: None)
        html = render(run)
        on_disk = html
        if self.file_refresh and not final:
            on_disk = html.replace("<head>", f'<head><meta http-equiv="refresh" content="{self.file_refresh}">', 1)
        if final and html == self.html and not self.file_refresh:  # nothing new to show: the version stays
            with self.changed:
                self.final = True
                self.changed.notify_all()
            return
        tmp = self.folder / f".{REPORT}.tmp"
        tmp.write_text(on_disk, encoding="utf-8")
        os.replace(tmp, self.folder / REPORT)  # a browser opening the file never reads half of it
        with self.changed:
            self.html, self.step, self.final = html, last_step(run), final
            self.version += 1
            self.changed.notify_all()

    @property
    def path(self) -> Path:
        return self.folder / REPORT

    def wait(self, since: int, timeout: float) -> tuple[int, bool]:
        """(version, final) as soon as the version differs from `since` or the report is final, or after `timeout`."""
        with self.changed:
            self.changed.wait_for(lambda: self.version != since or self.final, timeout=timeout)
            return self.version, self.final

    def page(self) -> str:
        """The report as served: its generation and step on <body>, and the reload script."""
        with self.changed:
            html, version, step = self.html, self.version, self.step
        html = html.replace("<body", f'<body data-version="{version}" data-step="{step}"', 1)
        return html.replace("</body>", RELOAD_SCRIPT % version + "</body>", 1)


def make_server(live: LiveReport, port: int = 0, hold: float = HOLD_S) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:port (0: a free port, `server.server_address[1]`) for the live report."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            url = urlsplit(self.path)
            if url.path in ("/", "/" + REPORT):
                self._send(200, "text/html; charset=utf-8", live.page())
            elif url.path == "/version":
                try:
                    since = int(parse_qs(url.query).get("since", ["-1"])[0])
                except ValueError:
                    since = -1
                version, final = live.wait(since, hold)
                self._send(200, "application/json", json.dumps({"version": version, "finished": final}))
            else:
                self._send(404, "text/plain; charset=utf-8", "not found: this server has the report only\n")

        def _send(self, status: int, kind: str, body: str) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # one line per request would drown the status lines
            pass

    try:
        server = ThreadingHTTPServer((HOST, port), Handler)
    except OSError as e:
        raise UsageError(f"--port {port}: cannot serve on {HOST}:{port} ({e.strerror or e}); give another port, "
                         "or --port 0 for any free one") from None
    server.daemon_threads = True  # a held /version request never delays the exit
    return server


def _say(line: str) -> None:
    print(line, flush=True)  # a pipe too sees the URL at once


def serve(folder: Path, port: int = 0, every: float = 2.0, settle: float = 10.0,
          say: Callable[[str], None] = _say) -> None:
    """Serve the live report on 127.0.0.1 until Ctrl-C (KeyboardInterrupt, passed on after closing the server)."""
    live = LiveReport(folder, settle=settle)
    server = make_server(live, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        say(f"serving the report of {live.folder} at http://{HOST}:{server.server_address[1]}/ "
            f"(redrawn when the run's files change, checked every {every:g} s; Ctrl-C stops)")
        said_final = False
        while True:
            if not said_final:
                live.poll()
                if live.final:
                    say(f"the run finished at step {live.step:,}: the report is final, still serving (Ctrl-C stops)")
                    said_final = True
            time.sleep(every)
    finally:
        server.shutdown()
        server.server_close()


def watch(folder: Path, every: float = 2.0, settle: float = 10.0, say: Callable[[str], None] = _say) -> Path:
    """Redraw RUN/report.html in place as the run advances, until the run has finished; returns its path."""
    live = LiveReport(folder, settle=settle, file_refresh=FILE_REFRESH_S)
    say(f"redrawing {live.path} as the run advances (step {live.step:,}; checked every {every:g} s; Ctrl-C stops)")
    while not live.final:
        time.sleep(every)
        if live.poll():
            say(f"redrawn at step {live.step:,}")
        elif live.stopped():
            live.poll(final=True)
            say(f"the run stopped at step {live.step:,} (no process trains in it): {live.path} shows it as it "
                "stopped; `vslm train --resume` continues it")
            return live.path
    say(f"the run finished at step {live.step:,}: {live.path} is final")
    return live.path
