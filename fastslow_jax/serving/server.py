"""HTTP front end of a SearchEngine: a JSON API and a search page (stdlib ``http.server``, threaded).

* ``GET /api/search?q=TEXT&k=10&rerank=0`` -> JSON (results with Fast/Slow scores, timings in ms);
  a bad query (empty, longer than MAX_QUERY_CHARS, not UTF-8, bad numbers) -> 400 ``{"error": ...}``.
* ``GET /image/<n>`` -> the n-th gallery image (0-based item number). Only gallery images are
  served: the path comes from the index, never from the request.
* ``GET /`` -> the search page; ``GET /api/info`` -> index size, model, whether Slow can re-rank.
"""
from __future__ import annotations

import json
import logging
import mimetypes
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from fastslow_jax.serving.engine import MAX_K, MAX_QUERY_CHARS, MAX_RERANK, QueryError

log = logging.getLogger(__name__)
MAX_URL = 8192

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fastslow search</title>
<style>
 body{font-family:sans-serif;margin:1.5em;background:#fafafa}
 form{display:flex;gap:.6em;align-items:center;flex-wrap:wrap}
 #q{width:32em;font-size:1.05em;padding:.3em}
 #results{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px;margin-top:1em}
 figure{margin:0;background:#fff;border:1px solid #ddd;padding:6px;font-size:.8em}
 figure img{width:100%;image-rendering:pixelated}
 #timings{color:#444;margin-top:.6em}.error{color:#b00}
</style></head><body>
<h2>fastslow search</h2>
<form id="form">
 <input id="q" name="q" type="search" placeholder="describe an image, e.g. a red circle left of a blue square"
        maxlength="__MAXQ__" autofocus>
 <label>results <input id="k" type="number" min="1" max="__MAXK__" value="12" style="width:4em"></label>
 <label><input id="slow" type="checkbox"> Fast+Slow (re-rank top <input id="rerank" type="number" min="1"
        max="__MAXR__" value="10" style="width:4em">)</label>
 <button type="submit">Search</button>
</form>
<div id="info"></div><div id="timings"></div><div id="results"></div>
<script>
const $ = (id) => document.getElementById(id);
fetch('/api/info').then(r => r.json()).then(info => {
  $('info').textContent = info.count + ' images, model ' + info.fingerprint +
    (info.can_rerank ? '' : ' (no Slow re-ranker: Fast only)');
  if (!info.can_rerank) { $('slow').disabled = true; }
});
$('form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const params = new URLSearchParams({q: $('q').value, k: $('k').value,
                                      rerank: $('slow').checked ? $('rerank').value : '0'});
  $('timings').textContent = 'searching...';
  const resp = await fetch('/api/search?' + params);
  const data = await resp.json();
  const res = $('results');
  res.innerHTML = '';
  if (!resp.ok) { $('timings').innerHTML = '<span class="error"></span>';
                  $('timings').firstChild.textContent = data.error; return; }
  const t = data.timings_ms;
  $('timings').textContent = (data.rerank ? 'Fast+Slow (top ' + data.rerank + ')' : 'Fast') +
    ': text ' + t.embed.toFixed(1) + ' ms, ScaNN ' + t.ann.toFixed(2) + ' ms, Slow ' + t.slow.toFixed(1) +
    ' ms, total ' + t.total.toFixed(1) + ' ms';
  for (const r of data.results) {
    const fig = document.createElement('figure');
    const img = document.createElement('img');
    img.src = r.image; img.alt = r.id; img.className = 'result';
    const cap = document.createElement('figcaption');
    cap.textContent = '#' + r.rank + ' fast ' + r.fast_score.toFixed(3) +
      (r.slow_score === null ? '' : ' slow ' + r.slow_score.toFixed(2)) + ' ' + r.id;
    fig.append(img, cap); res.append(fig);
  }
});
</script></body></html>
""".replace("__MAXQ__", str(MAX_QUERY_CHARS)).replace("__MAXK__", str(MAX_K)).replace("__MAXR__", str(MAX_RERANK))


class BadRequest(Exception):
    pass


def _int_param(params: dict, name: str, default: int) -> int:
    values = params.get(name)
    if not values or values[-1] == "":
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {values[-1][:40]!r}") from None


def make_handler(engine):
    class Handler(BaseHTTPRequestHandler):
        server_version = "fastslow"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet by default; errors go through the logger
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            if cache:
                self.send_header("Cache-Control", "max-age=3600")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

        def do_HEAD(self):
            self.do_GET()

        def do_GET(self):
            try:
                if len(self.path) > MAX_URL:
                    return self._json(HTTPStatus.REQUEST_URI_TOO_LONG, {"error": f"the URL is longer than {MAX_URL} characters"})
                url = urlsplit(self.path)
                if url.path == "/":
                    return self._send(200, PAGE.encode(), "text/html; charset=utf-8")
                if url.path == "/api/info":
                    m = engine.manifest
                    return self._json(200, {"count": len(engine.items), "fingerprint": m["model"]["fingerprint"],
                                            "model": m["model"], "can_rerank": engine.can_rerank,
                                            "max_k": MAX_K, "max_rerank": MAX_RERANK, "max_query_chars": MAX_QUERY_CHARS})
                if url.path == "/api/search":
                    return self._search(url.query)
                if url.path.startswith("/image/"):
                    return self._image(url.path[len("/image/"):])
                return self._json(404, {"error": f"no such page: {url.path[:100]}"})
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as err:  # noqa: BLE001 - answer 500 with the reason, keep serving
                log.exception("error answering %s", self.path[:200])
                try:
                    self._json(500, {"error": f"internal error: {type(err).__name__}: {err}"})
                except OSError:
                    pass

        def _search(self, query_string: str) -> None:
            try:
                params = parse_qs(query_string, keep_blank_values=True, errors="strict", max_num_fields=10)
            except UnicodeDecodeError:
                return self._json(400, {"error": "the query is not valid UTF-8"})
            except ValueError as err:
                return self._json(400, {"error": f"bad query string: {err}"})
            try:
                q = (params.get("q") or [""])[-1]
                k = _int_param(params, "k", 10)
                rerank = _int_param(params, "rerank", 0)
                result = engine.search(q, k, rerank)
            except (BadRequest, QueryError) as err:
                return self._json(400, {"error": str(err)})
            self._json(200, result)

        def _image(self, tail: str) -> None:
            if not tail.isdigit() or len(tail) > 12:
                return self._json(404, {"error": "images are addressed by their item number, e.g. /image/0"})
            n = int(tail)
            if n >= len(engine.items):
                return self._json(404, {"error": f"no image {n}; the index holds {len(engine.items)}"})
            path = engine.image_path(n)
            try:
                with open(path, "rb") as f:
                    body = f.read()
            except OSError:
                return self._json(404, {"error": f"image {n} is missing from disk"})
            ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            self._send(200, body, ctype, cache=True)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(engine, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A threaded HTTP server for ``engine`` bound to host:port (call ``serve_forever``)."""
    return _Server((host, port), make_handler(engine))
