"""Streaming chat: the answer printed token by token as the model writes it.

    python examples/chat_stream.py [--url http://127.0.0.1:8080] [--prompt TEXT] [--max-tokens N]

`POST /api/llm/generate` with `"stream": true` answers with server-sent events: `token`
events carrying `{"text": ...}`, then `done` with the usage, or `error` with a code and message.
"""

from __future__ import annotations

import json
import sys

import httpx
from _common import fail, headers, parser, run_script


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--prompt", default="Name three things that make a good cup of tea.")
    p.add_argument("--model", default=None, help="a configured LLM (default: the server's)")
    p.add_argument("--max-tokens", type=int, default=128)
    args = p.parse_args()
    request = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": args.prompt},
        ],
        "max_tokens": args.max_tokens,
        "stream": True,
    }
    if args.model:
        request["model"] = args.model
    tokens = 0
    with httpx.stream(
        "POST", f"{args.url}/api/llm/generate", json=request, headers=headers(), timeout=600
    ) as resp:
        if resp.status_code != 200:
            resp.read()
            fail(resp)
        event = "message"
        for line in resp.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event == "token":
                    tokens += 1
                    print(data["text"], end="", flush=True)
                elif event == "error":
                    print(f"\nerror: {data['code']}: {data['message']}", file=sys.stderr)
                    raise SystemExit(1)
                elif event == "done":
                    print(f"\n[{tokens} pieces; done: {json.dumps(data, ensure_ascii=False)}]")
            elif not line:
                event = "message"
    if tokens == 0:
        print("error: the stream ended without a token", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    run_script(main)
