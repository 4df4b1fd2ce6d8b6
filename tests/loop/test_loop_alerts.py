"""The loop tells staff: with a `[notify]` webhook configured, a permanent failure and the end of the session each
arrive exactly once at a local receiver (127.0.0.1), with readable text."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.loop.loophelpers import copy_movies, finish, import_session, start_loop


def test_loop_sends_failure_and_summary_once(home_env, sim_frames, tmp_path):
    home, env = home_env
    posts: list[dict] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            with lock:
                posts.append(body)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        (home / "config.toml").write_text(f'[notify]\nwebhook = "http://127.0.0.1:{server.server_address[1]}/hook"\n')
        frames = copy_movies(sim_frames, tmp_path / "frames", ["lp_00001", "lp_00002"])
        import_session(env, "al", frames)
        bad = frames / "lp_00002en.frames.tif"
        bad.write_bytes(bad.read_bytes()[:2000])  # truncated after registration: a deterministic failure
        log = tmp_path / "loop.log"
        proc = start_loop(env, ["--session", "al", "--no-wait", "--idle", "0", "--poll", "0.3",
                                "--dashboard-address", ":0"], log)
        assert finish(proc, 300, log) == 0, log.read_text()[-3000:]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    kinds = sorted(p["event"] for p in posts)
    assert kinds == ["exposure_failed", "session_finished"], posts
    failed = next(p for p in posts if p["event"] == "exposure_failed")
    assert "lp_00002en" in failed["text"] and "motion" in failed["text"]
    summary = next(p for p in posts if p["event"] == "session_finished")
    assert "al" in summary["subject"]
