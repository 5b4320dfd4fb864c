"""HTTP front end of a SearchEngine: a JSON API and a search page (Starlette on uvicorn).

* ``GET /api/search?q=TEXT&k=10&rerank=0`` -> JSON (results with Fast/Slow scores, per-stage timings
  in ms, the batch it was computed in); a bad query (empty, longer than MAX_QUERY_CHARS, not UTF-8,
  bad numbers) -> 400 ``{"error": ...}``; the queue full -> 503 with ``Retry-After``; not answered
  within the request timeout -> 504. Concurrent searches are batched (``batcher.Batcher``).
* ``GET /image/<n>`` -> the n-th gallery image (0-based item number). Only gallery images are
  served: the path comes from the index, never from the request.
* ``GET /`` -> the search page (``/?q=...&k=...&rerank=...`` runs that search: addresses can be
  shared); ``GET /api/info`` -> index size, model, whether Slow can re-rank, the batching settings.
* ``GET /healthz`` -> 200 while the process serves; ``GET /readyz`` -> 200 once every shape is
  compiled, 503 before (searches get 503 until then too).
* ``GET /openapi.json`` -> the OpenAPI 3 description of the API; ``GET /docs`` -> it as a page.

Every error is JSON ``{"error": message}``. Shutdown (SIGINT / SIGTERM) is graceful: no new
connections, requests in flight are answered, then the batcher stops.
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import mimetypes
import socket
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from fastslow_jax.serving.batcher import Batcher, Overloaded, ShuttingDown, Timeout, check_settings
from fastslow_jax.serving.engine import MAX_K, MAX_QUERY_CHARS, MAX_RERANK, QueryError

log = logging.getLogger(__name__)
MAX_URL = 8192
NOSNIFF = {"X-Content-Type-Options": "nosniff"}

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
 <label><input id="slow" type="checkbox" checked> Fast+Slow (re-rank top <input id="rerank" type="number" min="1"
        max="__MAXR__" value="10" style="width:4em">)</label>
 <button type="submit">Search</button>
</form>
<div id="info"></div><div id="timings"></div><div id="results"></div>
<p><small><a href="/docs">API</a></small></p>
<script>
const $ = (id) => document.getElementById(id);
let canRerank = true;
function fromAddress() {  // the form as the address says: /?q=...&k=...&rerank=... (rerank=0: Fast only)
  const p = new URLSearchParams(location.search);
  $('q').value = p.get('q') || '';
  if (p.get('k')) $('k').value = p.get('k');
  const r = p.get('rerank');
  if (r !== null && r !== '') {
    $('slow').checked = canRerank && r !== '0';
    if (r !== '0') $('rerank').value = r;
  } else {
    $('slow').checked = canRerank;
  }
  return p.get('q') !== null;
}
async function search(push) {
  const params = new URLSearchParams({q: $('q').value, k: $('k').value,
                                      rerank: $('slow').checked ? $('rerank').value : '0'});
  const address = '/?' + params;
  if (push && address !== location.pathname + location.search) history.pushState(null, '', address);
  $('timings').textContent = 'searching...';
  const res = $('results');
  let resp, data;
  try {
    resp = await fetch('/api/search?' + params);
    data = await resp.json();
  } catch (err) {
    $('timings').innerHTML = '<span class="error"></span>';
    $('timings').firstChild.textContent = 'the server did not answer: ' + err;
    return;
  }
  res.innerHTML = '';
  if (!resp.ok) { $('timings').innerHTML = '<span class="error"></span>';
                  $('timings').firstChild.textContent = data.error; return; }
  const t = data.timings_ms;
  $('timings').textContent = (data.rerank ? 'Fast+Slow (top ' + data.rerank + ')' : 'Fast') +
    ': text ' + t.embed.toFixed(1) + ' ms, ANN ' + t.ann.toFixed(2) + ' ms, Slow ' + t.slow.toFixed(1) +
    ' ms, queue ' + t.queue.toFixed(1) + ' ms, total ' + t.total.toFixed(1) + ' ms (batch of ' + data.batch + ')';
  for (const r of data.results) {
    const fig = document.createElement('figure');
    const img = document.createElement('img');
    img.src = r.image; img.alt = r.id; img.className = 'result';
    const cap = document.createElement('figcaption');
    cap.textContent = '#' + r.rank + ' fast ' + r.fast_score.toFixed(3) +
      (r.slow_score === null ? '' : ' slow ' + r.slow_score.toFixed(2)) + ' ' + r.id;
    fig.append(img, cap); res.append(fig);
  }
}
$('form').addEventListener('submit', (ev) => { ev.preventDefault(); search(true); });
window.addEventListener('popstate', () => { if (fromAddress()) search(false); });
fetch('/api/info').then(r => r.json()).then(info => {
  canRerank = info.can_rerank;
  $('info').textContent = info.count + ' images, model ' + info.fingerprint +
    (info.can_rerank ? '' : ' (no Slow re-ranker: Fast only)');
  const run = fromAddress();
  if (!info.can_rerank) { $('slow').checked = false; $('slow').disabled = true; }
  if (run) search(false);
});
</script></body></html>
""".replace("__MAXQ__", str(MAX_QUERY_CHARS)).replace("__MAXK__", str(MAX_K)).replace("__MAXR__", str(MAX_RERANK))

_ERROR = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
BASE_SCHEMA = {
    "openapi": "3.0.3",
    "info": {"title": "fastslow search", "version": "1",
             "description": "Text-to-image search: the Fast dual encoder retrieves with an ANN index, the Slow "
                            "cross-attention model re-ranks the top K. Concurrent searches are batched."},
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string", "description": "one sentence saying what is wrong"}}},
        "Result": {"type": "object", "properties": {
            "rank": {"type": "integer", "description": "1-based rank"},
            "index": {"type": "integer", "description": "item number in the index (its image: /image/{index})"},
            "id": {"type": "string"},
            "fast_score": {"type": "number", "description": "Fast cosine similarity"},
            "slow_score": {"type": "number", "nullable": True,
                           "description": "Slow log-likelihood of the query given the image (re-ranked items only)"},
            "image": {"type": "string", "description": "the image's address"}}},
        "SearchResponse": {"type": "object", "properties": {
            "query": {"type": "string", "description": "the query, stripped"},
            "k": {"type": "integer"},
            "rerank": {"type": "integer", "description": "how many of the Fast top results Slow re-ranked"},
            "alpha": {"type": "number", "nullable": True, "description": "weight of the Fast score in the order"},
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
            "timings_ms": {"type": "object", "description": "per stage, in ms: queue (waiting for a batch), embed "
                                                            "(text tower), ann, slow; total = all of them",
                           "properties": {s: {"type": "number"} for s in ("queue", "embed", "ann", "slow", "total")}},
            "batch": {"type": "integer", "description": "how many queries were computed together with this one"},
            "index_size": {"type": "integer"}}},
    }},
}


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


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status, headers={**NOSNIFF, **(headers or {})})


async def _wait_for_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def make_app(engine, *, max_batch: int | None = None, max_wait_ms: float = 2.0, queue_size: int = 64,
             timeout_s: float = 10.0) -> Starlette:
    """The ASGI app for ``engine``: its Batcher (settings as ``batcher.Batcher``) starts with the app
    (warm-up first: /readyz says when it is done) and stops at shutdown."""
    settings = dict(max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size, timeout_s=timeout_s)
    check_settings(engine.max_batch if max_batch is None else max_batch, max_wait_ms, queue_size, timeout_s,
                   engine.max_batch)
    schemas = SchemaGenerator(BASE_SCHEMA)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.batcher = Batcher(engine, **settings)
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, app.state.batcher.stop)

    def batcher(request: Request) -> Batcher:
        return request.app.state.batcher

    async def page(request: Request):
        """The search page: ``/?q=...&k=...&rerank=...`` runs that search when it loads."""
        return HTMLResponse(PAGE, headers=NOSNIFF)

    async def info(request: Request):
        """
        ---
        summary: The index, its model and the server's settings
        responses:
          200:
            description: index size, model fingerprint and runs, whether Slow can re-rank, limits, batching
              settings and counters
        """
        m = engine.manifest
        b = batcher(request)
        return JSONResponse({"count": len(engine.items), "fingerprint": m["model"]["fingerprint"],
                             "model": m["model"], "can_rerank": engine.can_rerank, "max_k": MAX_K,
                             "max_rerank": MAX_RERANK, "max_query_chars": MAX_QUERY_CHARS, "ready": b.ready.is_set(),
                             "batching": {"max_batch": b.max_batch, "max_wait_ms": 1e3 * b.max_wait_s,
                                          "queue_size": b.queue_size, "timeout_s": b.timeout_s},
                             "stats": b.snapshot()}, headers=NOSNIFF)

    async def search(request: Request):
        """
        ---
        summary: Search the gallery with a text query
        description: The Fast top k for the query; with rerank = K > 0 the Fast top K are re-ordered by Slow
          (the rest keep their Fast order). Concurrent searches are computed in batches.
        parameters:
          - {name: q, in: query, required: true, schema: {type: string, maxLength: 500}, description: the query}
          - {name: k, in: query, schema: {type: integer, minimum: 1, maximum: 100, default: 10},
             description: how many results}
          - {name: rerank, in: query, schema: {type: integer, minimum: 0, maximum: 100, default: 0},
             description: Slow re-ranks the Fast top K (0 = Fast only)}
        responses:
          200:
            description: the results
            content: {application/json: {schema: {$ref: '#/components/schemas/SearchResponse'}}}
          400: {description: a bad query (empty, too long, not UTF-8, bad k or rerank),
                content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}}
          503: {description: the queue is full, the server is warming up or stopping (see Retry-After),
                content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}}
          504: {description: not answered within the request timeout,
                content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}}
        """
        b = batcher(request)
        raw = request.scope["query_string"]
        if len(request.scope["raw_path"]) + len(raw) > MAX_URL:
            return _error(414, f"the URL is longer than {MAX_URL} characters")
        try:
            params = parse_qs(raw.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=10)
        except UnicodeDecodeError:
            return _error(400, "the query is not valid UTF-8")
        except ValueError as err:
            return _error(400, f"bad query string: {err}")
        try:
            q = (params.get("q") or [""])[-1]
            k = _int_param(params, "k", 10)
            rerank = _int_param(params, "rerank", 0)
            q = engine.check(q, k, rerank)
        except (BadRequest, QueryError) as err:
            return _error(400, str(err))
        if not b.ready.is_set():
            if b.warm_up_error is not None:
                return _error(500, f"the server could not compile its models: {b.warm_up_error}")
            return _error(503, "the server is still compiling its models; retry shortly", {"Retry-After": "5"})
        try:
            job = b.submit(q, k, rerank)
        except Overloaded as err:
            return _error(503, str(err), {"Retry-After": str(err.retry_after_s)})
        except ShuttingDown as err:
            return _error(503, str(err), {"Retry-After": "5"})
        answer = asyncio.wrap_future(job.future)
        gone = asyncio.ensure_future(_wait_for_disconnect(request.receive))
        try:
            done, _ = await asyncio.wait({answer, gone}, timeout=b.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if answer not in done:
            b.cancel(job)  # a queued job is never computed; a running one's answer is dropped
            if gone in done:
                return Response(status_code=499)  # nobody reads it: the client went away
            return _error(504, f"the search did not finish within {b.timeout_s:g} s")
        try:
            return JSONResponse(answer.result(), headers=NOSNIFF)
        except Timeout as err:
            return _error(504, str(err))
        except ShuttingDown as err:
            return _error(503, str(err), {"Retry-After": "5"})
        except QueryError as err:
            return _error(400, str(err))

    async def image(request: Request):
        """
        ---
        summary: A gallery image by its item number
        parameters:
          - {name: n, in: path, required: true, schema: {type: integer, minimum: 0}, description: item number}
        responses:
          200: {description: the image file}
          404: {description: no such item, content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}}
        """
        tail = request.path_params["n"]
        if not tail.isdigit() or len(tail) > 12:
            return _error(404, "images are addressed by their item number, e.g. /image/0")
        n = int(tail)
        if n >= len(engine.items):
            return _error(404, f"no image {n}; the index holds {len(engine.items)}")
        path = engine.image_path(n)
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            return _error(404, f"image {n} is missing from disk")
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return Response(body, media_type=ctype, headers={**NOSNIFF, "Cache-Control": "max-age=3600"})

    async def healthz(request: Request):
        """
        ---
        summary: Liveness
        responses:
          200: {description: the process is serving}
        """
        return JSONResponse({"status": "ok"}, headers=NOSNIFF)

    async def readyz(request: Request):
        """
        ---
        summary: Readiness
        responses:
          200: {description: every shape is compiled; searches are answered}
          503: {description: still compiling (or the compilation failed, or stopping),
                content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}}
        """
        b = batcher(request)
        if b.ready.is_set() and not b.stopping:
            return JSONResponse({"status": "ready"}, headers=NOSNIFF)
        if b.warm_up_error is not None:
            return _error(503, f"the server could not compile its models: {b.warm_up_error}")
        if b.stopping:
            return _error(503, "the server is shutting down")
        done, total = b.warm_up_progress
        return _error(503, f"compiling: {done} of {total or '?'} shapes done", {"Retry-After": "5"})

    async def openapi(request: Request):
        """The OpenAPI description of the API (JSON)."""
        return JSONResponse(schemas.get_schema(routes=request.app.routes), headers=NOSNIFF)

    async def docs(request: Request):
        """The OpenAPI description as a page (no script, nothing from elsewhere)."""
        return HTMLResponse(docs_page(schemas.get_schema(routes=request.app.routes)), headers=NOSNIFF)

    async def not_found(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return _error(404, f"no such page: {request.url.path[:100]}")
        if exc.status_code == 405:
            return _error(405, f"{request.method} is not allowed here; use GET", {"Allow": "GET, HEAD"})
        return _error(exc.status_code, str(exc.detail))

    async def internal_error(request: Request, exc: Exception):
        log.exception("error answering %s", request.url.path[:200])
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    routes = [Route("/", page, include_in_schema=False), Route("/api/search", search), Route("/api/info", info),
              Route("/image/{n:path}", image), Route("/healthz", healthz), Route("/readyz", readyz),
              Route("/openapi.json", openapi, include_in_schema=False), Route("/docs", docs, include_in_schema=False)]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: not_found, Exception: internal_error})


def docs_page(schema: dict) -> str:
    """The API description as HTML: every path, its parameters and its responses."""
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(schema['info']['title'])} API"
             "</title><style>body{font-family:sans-serif;margin:1.5em;max-width:60em}code{background:#eee}"
             "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}table{border-collapse:collapse}"
             "</style></head><body>", f"<h2>{e(schema['info']['title'])} API</h2>",
             f"<p>{e(schema['info']['description'])}</p><p>Machine-readable: <a href='/openapi.json'>"
             "/openapi.json</a> (OpenAPI 3)</p>"]
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            parts.append(f"<h3><code>{e(method.upper())} {e(path)}</code> {e(op.get('summary', ''))}</h3>")
            if op.get("description"):
                parts.append(f"<p>{e(op['description'])}</p>")
            if op.get("parameters"):
                parts.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>meaning</th></tr>")
                for p in op["parameters"]:
                    s = p.get("schema", {})
                    extra = ", ".join(f"{k} {s[k]}" for k in ("default", "minimum", "maximum", "maxLength") if k in s)
                    parts.append(f"<tr><td><code>{e(p['name'])}</code>{' (required)' if p.get('required') else ''}"
                                 f"</td><td>{e(p['in'])}</td><td>{e(s.get('type', ''))}{e(' (' + extra + ')') if extra else ''}"
                                 f"</td><td>{e(p.get('description', ''))}</td></tr>")
                parts.append("</table>")
            parts.append("<ul>" + "".join(f"<li><b>{e(str(code))}</b> {e(r.get('description', ''))}</li>"
                                          for code, r in op.get("responses", {}).items()) + "</ul>")
    parts.append("<h3>Schemas</h3><pre>" + e(json.dumps(schema["components"]["schemas"], indent=1)) + "</pre>")
    return "".join(parts) + "</body></html>"


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening TCP socket on host:port (port 0 = any free one), or a one-sentence error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app, *, graceful_s: float = 30.0, access_log: bool = False):
    """A uvicorn Server for ``app`` (run it with ``server.run(sockets=[bind(...)])``). SIGINT / SIGTERM
    stop it gracefully: requests in flight get their answers (for up to ``graceful_s`` seconds)."""
    import uvicorn
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=access_log,
                            timeout_graceful_shutdown=graceful_s, server_header=False,
                            backlog=2048, timeout_keep_alive=30)
    return uvicorn.Server(config)
