"""Optional LLM answer extraction (``--judge URL``) through any OpenAI-compatible server.

The official MathVista / MathVerse / MathVision evaluators have GPT-4 read the answer out of a
response. We read it by rules; only when the rules find nothing does a scorer ask the judge, with
a short few-shot prompt, for the answer the response states (or "null"). The judge's answer then
goes through the same rule-based comparison as any other, so the judge never decides correctness.

Any server speaking ``POST /v1/chat/completions`` works (vLLM's ``vllm serve``, llama.cpp's
server, a hosted API). Decoding is greedy (temperature 0) and short (``max_tokens``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from stages.errors import MgpoError

_MAX_RESPONSE_CHARS = 6000  # the answer is at the end; long reasoning only costs tokens
_NULL = {"", "null", "none", "n/a", "no answer"}

INSTRUCTION = """You read a model's response to a math question and copy out the final answer \
it gives. Write only that answer, with no explanation. If the question has lettered options and \
the response picks one, write the letter. If the response gives no answer, write null.

Example 1
Question: What is the value of x? Choices: (A) 3 (B) 4 (C) 5 (D) 6
Response: Using the Pythagorean theorem, x^2 = 25, so x = 5, which is option C.
Wanted: the option letter the response chooses
Extracted answer: C

Example 2
Question: Find the area of the triangle (unit: cm^2).
Response: The base is 6 and the height is 4, so the area is 12 square centimetres.
Wanted: the final answer the response gives
Extracted answer: 12

Example 3
Question: Which year had the highest sales?
Response: The chart is too blurry for me to tell.
Wanted: the final answer the response gives
Extracted answer: null"""


def build_prompt(question: str, response: str, hint: str) -> str:
    """The judge's user message: instruction, examples, then this question and response."""
    tail = response[-_MAX_RESPONSE_CHARS:]
    return (
        f"{INSTRUCTION}\n\nNow this one\nQuestion: {question.strip()}\nResponse: {tail.strip()}\n"
        f"Wanted: {hint}\nExtracted answer:"
    )


def parse_reply(text: str) -> str | None:
    """The answer in the judge's reply, or None when it says there is none."""
    reply = text.strip()
    if reply.lower().startswith("extracted answer:"):
        reply = reply[len("extracted answer:") :].strip()
    reply = reply.splitlines()[0].strip().strip("`\"'").strip() if reply else ""
    return None if reply.lower().rstrip(".") in _NULL else reply


@dataclass
class Judge:
    """A chat-completions client used only when rules find no answer in a response.

    ``url`` may be the server root (``http://127.0.0.1:8000``), its ``/v1`` base, or the full
    ``/v1/chat/completions`` address. ``model`` defaults to the first one ``/v1/models`` lists.
    """

    url: str
    model: str | None = None
    timeout: float = 120.0
    max_tokens: int = 64
    api_key: str | None = None
    calls: int = field(default=0, init=False)

    @property
    def base(self) -> str:
        base = self.url.rstrip("/")
        for suffix in ("/chat/completions", "/v1"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        return base + "/v1"

    def _request(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                return json.loads(reply.read().decode())
        except urllib.error.HTTPError as error:
            raise MgpoError(f"--judge {self.url}: HTTP {error.code} from {path}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise MgpoError(f"--judge {self.url}: cannot reach the server ({reason})") from None
        except json.JSONDecodeError:
            raise MgpoError(f"--judge {self.url}: {path} did not answer with JSON") from None

    def model_name(self) -> str:
        """The model to ask: the configured one, else the first the server lists."""
        if self.model is None:
            listed = self._request("/models").get("data") or []
            if not listed or "id" not in listed[0]:
                raise MgpoError(f"--judge {self.url}: /v1/models lists no model; pass a model name")
            self.model = str(listed[0]["id"])
        return self.model

    def complete(self, prompt: str) -> str:
        """One greedy chat completion of a single user message."""
        payload = {
            "model": self.model_name(),
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        reply = self._request("/chat/completions", payload)
        self.calls += 1
        try:
            return str(reply["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise MgpoError(
                f"--judge {self.url}: reply is not a chat completion (no choices[0].message)"
            ) from None

    def extract(self, question: str, response: str, hint: str) -> str | None:
        """The answer ``response`` states, as the judge reads it, or None."""
        return parse_reply(self.complete(build_prompt(question, response, hint)))
