"""nginx as the benchmarks' mock upstream: a fixed OpenAI chat completion, at a fraction of
the fake upstream's CPU per call.

The Python fake upstream (``spendgate.testing.fake_upstream``, uvicorn) costs a good part of
what the gateway itself costs per call; on a 2-core machine that CPU comes out of the cores
the gateway is meant to scale onto. nginx answers from memory (``return 200 '...'``), one
process, no access log.

What it answers (nothing else; streaming is out of scope):

* ``POST /v1/chat/completions``: :data:`CHAT_COMPLETION`, a non-streaming chat completion
  for the bench's model with a non-zero ``usage`` block, so the gateway prices and writes
  the call as it would a real one. The request body is read and discarded.
* ``GET /v1/models``: the model list, for the readiness check.

Standard library only, like the benchmarks that use it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

#: the same shape and size as the fake upstream's answer to the bench's prompt
#: (``spendgate.proxy.simulated.openai_response`` for "hello benchmark")
CHAT_COMPLETION = {
    "id": "chatcmpl-ecede6ae7ab3606e9ba7d2d5",
    "object": "chat.completion",
    "created": 1705527398,
    "model": "{model}",
    "system_fingerprint": "fp_simulated",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Simulated reply: stream limit usage limit model quota limit spend "
                "quota price ledger model budget model limit window price quota spend",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 4,
        "completion_tokens": 21,
        "total_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
}

MISSING = "nginx not found: install it (Debian: apt-get install -y nginx), or use --upstream fake"


def nginx_binary() -> str | None:
    """The nginx executable; Debian puts it in /usr/sbin, which a user's PATH may lack."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def _literal(value: object) -> str:
    """``value`` as compact JSON inside an nginx single-quoted string. nginx expands ``$``
    in ``return`` text, so a body with one is refused rather than silently changed."""
    text = json.dumps(value, separators=(",", ":"))
    if "$" in text:
        raise ValueError(f"nginx would expand '$' in the mock body: {text[:80]}")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def nginx_conf(prefix: Path, port: int, model: str, error_log: Path) -> str:
    """A self-contained nginx.conf: in the foreground, one process (no master, so nothing to
    switch users for and one pid to measure), its pid and temp files under ``prefix``."""
    chat = json.loads(json.dumps(CHAT_COMPLETION).replace("{model}", model))
    models = {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "bench"}]}
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / (kind + '_temp')};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {prefix / "nginx.pid"};
error_log {error_log} warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
{temp}
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type application/json;

    server {{
        listen 127.0.0.1:{port};

        location = /v1/chat/completions {{
            if ($request_method != POST) {{
                return 405;
            }}
            return 200 {_literal(chat)};
        }}
        location = /v1/models {{
            return 200 {_literal(models)};
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


def nginx_argv(binary: str, prefix: Path, port: int, model: str, error_log: Path) -> list[str]:
    """Write ``prefix``/nginx.conf and return the command that serves it (``-e``: errors
    while starting go to ``error_log`` too, not to /var/log/nginx)."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port, model, error_log))
    return [binary, "-p", str(prefix), "-c", str(conf), "-e", str(error_log)]
