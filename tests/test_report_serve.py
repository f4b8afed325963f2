"""`vslm report RUN --serve` and `--watch`: the report redrawn as a run advances (simulated by appending the
metrics lines of a finished 4-step run), served on 127.0.0.1 only, the page reloading itself in a browser."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from filelock import FileLock

from conftest import REPO, ctrl_c_reaches, files_in, tiny_overrides
from test_report import CHROMIUM, chromium
from vslm.cli import main
from vslm.config import load_config
from vslm.files import LOCK
from vslm.report.serve import LiveReport, make_server
from vslm.train.trainer import Trainer

UNFINISHED = "unfinished: 2 of 4 steps"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "finished"
    Trainer(load_config("tiny", tiny_overrides(train__steps=4, train__eval_every=2)), folder).fit()
    return folder


@pytest.fixture
def growing(finished_run, tmp_path) -> Path:
    """The finished run as it was at step 2 of 4 (files dated in the past); `advance(folder)` ends it."""
    folder = tmp_path / "growing"
    folder.mkdir()
    for name in ("config.toml", "summary.json"):
        shutil.copy(finished_run / name, folder / name)
    lines = (finished_run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(line)["step"] for line in lines][-1] == 4
    (folder / "metrics.jsonl").write_text("".join(line for line in lines if json.loads(line)["step"] <= 2))
    for path in folder.iterdir():
        os.utime(path, (time.time() - 60, time.time() - 60))
    with FileLock(str(folder / LOCK)):  # a trainer in it, as while it trains
        yield folder


def advance(folder: Path, finished_run: Path) -> None:
    """The run logs its remaining steps."""
    lines = (finished_run / "metrics.jsonl").read_text().splitlines(keepends=True)
    with open(folder / "metrics.jsonl", "a") as f:
        f.write("".join(line for line in lines if json.loads(line)["step"] > 2))


def get(url: str, timeout: float = 30) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode("utf-8")


@pytest.fixture
def served(growing):
    live = LiveReport(growing, settle=0)
    server = make_server(live, port=0, hold=10)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield live, server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_served_report_follows_the_run_and_is_bound_to_localhost(served, growing, finished_run):
    live, server, url = served
    assert server.socket.getsockname()[0] == "127.0.0.1"  # never 0.0.0.0: not reachable from another machine
    page = get(url + "/")
    assert 'data-version="1" data-step="2"' in page and UNFINISHED in page and "<script>" in page
    assert "<script" not in (growing / "report.html").read_text()  # the file on disk stays script-free
    assert json.loads(get(url + "/version")) == {"version": 1, "finished": False}
    assert not live.poll()  # nothing changed: no redraw, the page does not reload

    held = {}
    waiter = threading.Thread(target=lambda: held.update(json.loads(get(url + "/version?since=1"))))
    waiter.start()  # a page showing version 1 waits for the next one
    time.sleep(0.3)
    assert waiter.is_alive()
    advance(growing, finished_run)
    assert live.poll()
    waiter.join(5)
    assert held == {"version": 2, "finished": True}  # answered at the redraw; the run is at its last step

    page = get(url + "/report.html")
    assert 'data-version="2" data-step="4"' in page and UNFINISHED not in page and "steps trained</td><td>4<" in page
    assert "steps trained</td><td>4<" in (growing / "report.html").read_text()
    assert json.loads(get(url + "/version?since=2")) == {"version": 2, "finished": True}  # no wait once final
    advance(growing, finished_run)
    assert not live.poll() and live.version == 2  # final: no more redraws
    for path in ("/config.toml", "/../metrics.jsonl"):
        with pytest.raises(urllib.error.HTTPError) as e:
            get(url + path)
        assert e.value.code == 404  # the report only, never the run's files


def test_live_report_does_not_import_torch(growing):
    code = ("import sys; from pathlib import Path; from vslm.report.serve import LiveReport; "
            f"live = LiveReport(Path({str(growing)!r})); assert live.version == 1; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_report_serve_cli_prints_a_localhost_url_and_stops_on_ctrl_c(growing, finished_run):
    proc = subprocess.Popen([sys.executable, "-m", "vslm", "report", str(growing), "--serve", "--every", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=ctrl_c_reaches,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # SIGABRT below: every thread's stack
    try:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert found, line + proc.stderr.read() if proc.poll() is not None else line
        url = found.group(0)
        assert UNFINISHED in get(url)
        advance(growing, finished_run)
        version = json.loads(get(url + "version?since=1"))
        assert version["version"] > 1
        assert "steps trained</td><td>4<" in get(url)
        assert "the run finished at step 4" in proc.stdout.readline()
        # bound to 127.0.0.1 alone: another address of this machine (127.0.0.2 on Linux's lo) gets no answer,
        # as a server on 0.0.0.0 would give
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", int(found.group(1))), timeout=5).close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:  # generous: on a loaded 2-core machine a redraw in progress can delay the exit
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # say where it hangs: faulthandler prints every thread's stack
            proc.send_signal(signal.SIGABRT)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # not even that: never leave the child behind
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"no exit 120 s after Ctrl-C; stdout: {out[-2000:]!r}; stderr: {err[-6000:]}")
    assert proc.returncode == 130
    assert err.strip() == "vslm: interrupted"


def test_report_watch_redraws_the_file_until_the_run_ends(growing, finished_run, capsys):
    live = LiveReport(growing, settle=0, file_refresh=10)
    assert '<meta http-equiv="refresh" content="10">' in live.path.read_text()  # the opened file reloads itself
    timer = threading.Timer(0.5, advance, (growing, finished_run))
    timer.start()
    assert main(["report", str(growing), "--watch", "--every", "0.1"]) == 0
    timer.join()
    captured = capsys.readouterr()
    assert captured.out.strip() == str(growing / "report.html")
    assert "the run finished at step 4" in captured.err
    html = (growing / "report.html").read_text()
    assert "steps trained</td><td>4<" in html and UNFINISHED not in html
    assert "refresh" not in html and "<script" not in html  # the final file is the plain report


def test_sigterm_outside_a_training_is_one_line_exit_143(finished_run):
    """`kill PID` on a command that is not training (here a server): the documented exit 143 and a line that
    says so, not a bare death by signal."""
    proc = subprocess.Popen([sys.executable, "-m", "vslm", "report", str(finished_run), "--serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert "serving the report" in proc.stdout.readline()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == "vslm: stopped by SIGTERM"  # a server has nothing to reuse


def test_serve_and_watch_flags_without_them_are_refused(finished_run, capsys):
    held = files_in(finished_run)
    for flags, message in ((["--port", "8000"], "--port applies to --serve"),
                           (["--every", "5"], "--every applies to --serve and --watch"),
                           (["--watch", "--port", "8000"], "--port applies to --serve")):
        assert main(["report", str(finished_run), *flags]) == 2  # said, not ignored
        assert capsys.readouterr().err == f"vslm: error: {message}\n"
    assert files_in(finished_run) == held  # no page written


def test_a_port_in_use_is_one_line(finished_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["report", str(finished_run), "--serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--port {port}: cannot serve on 127.0.0.1:{port}" in err and "--port 0" in err


def test_report_watch_ends_on_a_run_that_stopped(finished_run, tmp_path, capsys):
    """A run killed at step 2 of 4 (its lock held by no one, its files quiet for a minute): the file is drawn
    once more without its reload and --watch ends, instead of redrawing forever."""
    folder = tmp_path / "killed"
    folder.mkdir()
    shutil.copy(finished_run / "config.toml", folder / "config.toml")
    lines = (finished_run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (folder / "metrics.jsonl").write_text("".join(line for line in lines if json.loads(line)["step"] <= 2))
    (folder / LOCK).touch()
    for path in folder.iterdir():
        os.utime(path, (time.time() - 60, time.time() - 60))
    assert main(["report", str(folder), "--watch", "--every", "0.1"]) == 0
    assert "the run stopped at step 2 (no process trains in it)" in capsys.readouterr().err
    assert "refresh" not in (folder / "report.html").read_text()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                    "(scripts/ci-setup.sh installs it)")
def test_served_page_reloads_itself_in_headless_chromium(served, growing, finished_run, tmp_path):
    """Chromium opens the page at step 2; once its script asks for the next version the run ends; the
    page must reload by itself and show step 4 (the DOM is dumped when the page has gone quiet)."""
    live, _, url = served
    pages, waiting = [], threading.Event()
    page, wait = live.page, live.wait
    live.page = lambda: pages.append(1) or page()
    live.wait = lambda since, timeout: waiting.set() or wait(since, timeout)

    def run_ends():
        if waiting.wait(60):
            advance(growing, finished_run)
            live.poll()

    ender = threading.Thread(target=run_ends, daemon=True)
    ender.start()
    run = chromium("--dump-dom", url + "/", profile=tmp_path / "profile")
    ender.join(5)
    assert run.returncode == 0, run.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", run.stdout).group(1)
    assert 'data-version="2"' in body and 'data-step="4"' in body, body
    assert len(pages) == 2  # loaded, then reloaded by its own script
    assert UNFINISHED not in run.stdout


def test_sigterm_says_what_is_kept_only_where_a_command_reuses_it(monkeypatch, capsys):
    """Every command said 'what was finished is kept: the same command reuses it'; only those of many runs do."""
    from vslm import cli

    def stopped(argv):
        raise cli.Terminated

    monkeypatch.setattr(cli, "_main", stopped)
    for argv, said in ((["experiment", "smoke"], " (what was finished is kept: the same command reuses it)"),
                       (["scaling", "scaling-tiny"], " (what was finished is kept: the same command reuses it)"),
                       (["facts", "distill", "t"], " (what was finished is kept: the same command reuses it)"),
                       (["facts", "eval", "run"], ""), (["facts", "reader"], ""),
                       (["eval", "run", "--on", "stories"], ""), (["watch", "run"], ""), (["sample", "run"], "")):
        assert cli.main(argv) == 143
        assert capsys.readouterr().err == f"vslm: stopped by SIGTERM{said}\n"
