"""The LLM judge against a real HTTP server on 127.0.0.1 speaking the OpenAI chat format.

The server is a tiny ``http.server`` started in the test: it answers ``/v1/models`` and
``/v1/chat/completions`` like vLLM does, replying with a scripted answer, and records requests.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from stages.errors import MgpoError
from stages.eval import Judge, get_benchmark
from stages.eval.judge import parse_reply

UNSURE = "Looking at the diagram, the triangle is isosceles, so both base angles are equal."


class Server:
    def __init__(self) -> None:
        self.replies: list[str] = []
        self.requests: list[tuple[str, dict | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.requests.append((self.path, None))
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"data": [{"id": "judge-model"}]}).encode())
                else:
                    self._send(404, b"{}")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length))
                outer.requests.append((self.path, payload))
                if self.path != "/v1/chat/completions":
                    self._send(404, b"{}")
                    return
                if outer.replies and outer.replies[0] == "<not json>":
                    self._send(200, b"plain text")
                    return
                content = outer.replies.pop(0) if outer.replies else "null"
                reply = {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "model": payload["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                }
                self._send(200, json.dumps(reply).encode())

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def chat_requests(self) -> list[dict]:
        return [p for path, p in self.requests if path == "/v1/chat/completions"]


@pytest.fixture
def server():
    server = Server()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    server.thread.join(timeout=5)


@pytest.fixture
def row():
    return {
        "id": "mathvision-1",
        "prompt": "<image>How many? (A) 1 (B) 2 (C) 3 You FIRST think ...",
        "images": [],
        "answer": "C",
        "choices": ["1", "2", "3"],
        "source": "mathvision",
        "meta": {"question_text": "How many?\nChoices:\n(A) 1\n(B) 2\n(C) 3", "level": 1},
    }


def test_judge_round_trip_discovers_the_model(server):
    server.replies = ["Extracted answer: 42"]
    judge = Judge(server.url)
    assert judge.extract("What is 6 x 7?", "It is forty-two.", "the final answer") == "42"
    assert judge.model == "judge-model" and judge.calls == 1
    (payload,) = server.chat_requests()
    assert payload["model"] == "judge-model" and payload["temperature"] == 0.0
    message = payload["messages"][0]
    assert message["role"] == "user"
    assert "Question: What is 6 x 7?" in message["content"]
    assert "Response: It is forty-two." in message["content"]
    assert message["content"].endswith("Extracted answer:")


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/chat/completions"])
def test_url_forms(server, suffix):
    server.replies = ["B"]
    judge = Judge(server.url + suffix, model="given")
    assert judge.extract("q", "r", "h") == "B"
    assert [path for path, _ in server.requests] == ["/v1/chat/completions"]


def test_judge_is_used_only_when_rules_find_nothing(server, row):
    bench = get_benchmark("mathvision")
    judge = Judge(server.url, model="m")
    ruled = bench.score(row, "\\boxed{C}", judge=judge)
    assert ruled["via"] == "rule" and ruled["correct"] is True
    assert server.chat_requests() == []

    server.replies = ["C"]
    judged = bench.score(row, UNSURE, judge=judge)
    assert judged == {"extracted": "C", "via": "judge", "correct": True, "normalised": "C"}
    (payload,) = server.chat_requests()
    content = payload["messages"][0]["content"]
    assert "Question: How many?\nChoices:" in content and "<image>" not in content
    assert "Wanted: the option letter" in content

    server.replies = ["null"]
    nothing = bench.score(row, UNSURE, judge=judge)
    assert nothing["via"] == "none" and nothing["correct"] is False
    assert judge.calls == 2


def test_judge_answer_still_goes_through_the_rules(server, row):
    server.replies = ["B"]
    result = get_benchmark("mathvision").score(row, UNSURE, judge=Judge(server.url, model="m"))
    assert result["via"] == "judge" and result["correct"] is False


def test_errors_are_one_line(server):
    server.replies = ["<not json>"]
    with pytest.raises(MgpoError, match="did not answer with JSON"):
        Judge(server.url, model="m").extract("q", "r", "h")
    with pytest.raises(MgpoError, match="HTTP 404"):
        Judge(server.url + "/wrong", model="m").extract("q", "r", "h")
    server.httpd.shutdown()
    server.httpd.server_close()
    with pytest.raises(MgpoError, match="cannot reach the server") as error:
        Judge(server.url, model="m", timeout=5).extract("q", "r", "h")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("C", "C"),
        (" Extracted answer: 12 cm\nbecause ...", "12 cm"),
        ("`x^2`", "x^2"),
        ("null", None),
        ("None.", None),
        ("", None),
    ],
)
def test_parse_reply(reply, answer):
    assert parse_reply(reply) == answer
