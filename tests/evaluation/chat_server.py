"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for evaluation tests.

Replies depend on the requested model:
- "judge": a JSON verdict {"score": 4, ...} (LLM-as-a-judge);
- "missing": HTTP 404 (unknown model);
- "flaky-*": HTTP 503 for the first request of each conversation, then like any other model;
- "null-once": no message text (content null) for the first request of each conversation;
- "html": an HTML page with status 200 (a proxy's error page);
- "tired": HTTP 400 once `answers_left` requests have been answered;
- anything else: "reply to: <the last user message>".
GET /v1/models/{id} answers with `cards[id]` (404 for a model not in it, or with `list_only`,
as vLLM has only GET /v1/models). Every request body
and Authorization header is recorded, with the peak number in flight.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY_S = 0.1
JUDGE_SCORE = 4


def reply_text(messages: list[dict]) -> str:
    return "reply to: " + next(m["content"] for m in reversed(messages) if m["role"] == "user")


class ChatServer:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self.seen: Counter = Counter()
        self.inflight = self.max_inflight = 0
        self.answers_left = 3
        self.answered = 0  # requests answered with a chat completion
        self.cards: dict[str, dict] = {}
        self.list_only = False  # as vLLM: GET /v1/models only, no /v1/models/{id}

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def reply(self, body: dict) -> tuple[int, str | None]:
        model = body["model"]
        key = json.dumps(body["messages"])
        with self.lock:
            self.seen[key] += 1
            first = self.seen[key] == 1
        if model == "missing":
            return 404, f"model {model} not found"
        if model.startswith("flaky") and first:
            return 503, "overloaded"
        if model == "null-once" and first:
            return 200, None
        if model == "tired":
            with self.lock:
                if self.answers_left == 0:
                    return 400, "no more"
                self.answers_left -= 1
        if model == "judge":
            return 200, json.dumps({"explanation": "clear and kind", "score": JUDGE_SCORE})
        return 200, reply_text(body["messages"])

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.auth.append(self.headers.get("Authorization", ""))
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    time.sleep(DELAY_S)
                    status, content = server.reply(body)
                finally:
                    with server.lock:
                        server.inflight -= 1
                if self.path != "/v1/chat/completions":
                    status, content = 404, f"no route {self.path}"
                if status == 200 and body["model"] == "html":
                    return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
                if status == 200:
                    with server.lock:
                        server.answered += 1
                    message = {"role": "assistant", "content": content}
                    payload = {
                        "id": "cmpl-1", "object": "chat.completion", "created": 0,
                        "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }  # fmt: skip
                else:
                    payload = {"error": {"message": content, "type": "server_error"}}
                self._send(status, json.dumps(payload).encode())

            def do_GET(self):  # noqa: N802
                if self.path == "/v1/models":
                    cards = [{"id": k, "object": "model", **v} for k, v in server.cards.items()]
                    return self._send(200, json.dumps({"object": "list", "data": cards}).encode())
                name = self.path.removeprefix("/v1/models/")
                if name in server.cards and not server.list_only:
                    card = {"id": name, "object": "model", **server.cards[name]}
                    return self._send(200, json.dumps(card).encode())
                error = {"error": {"message": f"no model {name}", "type": "not_found"}}
                self._send(404, json.dumps(error).encode())

            def _send(self, status: int, data: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler
