"""A judge behind an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server,
Ollama, a hosted API), asked the HarmBench classifier question.

The key is read from an environment variable (never a flag, so it stays out of shell history
and run manifests). Each request has a timeout and is retried with exponential backoff; an
endpoint that stays unreachable is a one-line error naming the URL.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import UserError
from .base import Verdict, check_pairs
from .classifier import HARMBENCH_SYSTEM, harmbench_body


class EndpointJudge:
    name = "endpoint"
    version = "1"
    reads_completions = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        retries: int = 3,
        workers: int = 4,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"endpoint base_url {base_url!r} must start with http:// or https://")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.key_env = key_env
        self.timeout = timeout
        self.retries = retries
        self.workers = workers

    def _request(self, content: str) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": content}],
                "temperature": 0,
                "max_tokens": 2,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        last = ""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read())
                return str(reply["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code}"
                if error.code in (400, 401, 403, 404):
                    hint = f" (is ${self.key_env} set?)" if error.code in (401, 403) else ""
                    raise UserError(f"judge endpoint {self.url} answered {last}{hint}") from None
            except (urllib.error.URLError, TimeoutError, OSError) as error:
                last = str(getattr(error, "reason", error))
            except (KeyError, IndexError, ValueError):
                raise UserError(
                    f"judge endpoint {self.url} did not answer in the chat-completions format"
                ) from None
            if attempt < self.retries:
                time.sleep(min(2.0**attempt, 30.0))
        raise UserError(
            f"judge endpoint {self.url} unreachable after {self.retries + 1} tries ({last}); "
            "check the base URL and that the server is up"
        )

    def verdicts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[Verdict]:
        check_pairs(prompts, completions)
        contents = [
            f"{HARMBENCH_SYSTEM}\n\n{harmbench_body(p, c)}"
            for p, c in zip(prompts, completions, strict=True)
        ]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            answers = list(pool.map(self._request, contents))
        return [self._verdict(answer) for answer in answers]

    @staticmethod
    def _verdict(answer: str) -> Verdict:
        word = answer.strip().split()[0].strip(".,!:").lower() if answer.strip() else ""
        if word in ("yes", "no"):
            return Verdict(complied=word == "yes", detail={"answer": answer})
        return Verdict(detail={"answer": answer, "unparsed": True})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "url": self.url, "model": self.model}
