"""The product description's LLM example, verbatim: a Chinese prompt to the model "qwen2.5".

    python examples/spec_llm.py [--url http://127.0.0.1:8080] [--model NAME]

Qwen2.5 is not embedded (the default LLM is SmolLM2-135M, English only): until it is fetched
with `ris pull qwen2.5`, the server answers 404 `unknown_model` naming that command, and this
script prints it and exits with status 1. `--model smollm2` runs the request on the embedded
model instead (it answers in English, or poorly in Chinese; the server says so in `warnings`).
"""

from __future__ import annotations

import httpx
from _common import error_of, fail, headers, parser, run_script


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", default="qwen2.5", help="a configured LLM (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None, help="cap the answer's length")
    args = p.parse_args()
    request = {"prompt": "你好，请介绍一下自己", "model": args.model, "temperature": 0.7}
    if args.max_tokens is not None:
        request["max_tokens"] = args.max_tokens
    resp = httpx.post(f"{args.url}/api/llm/generate", json=request, headers=headers(), timeout=600)
    if resp.status_code != 200:
        code, _ = error_of(resp)
        hint = ""
        if code == "unknown_model":
            hint = (
                f"`ris pull {args.model}` fetches a catalogued model and configures it (docs/MODELS.md); "
                f"or run this with --model NAME (GET {args.url}/api/models lists the configured ones)"
            )
        fail(resp, hint)
    answer = resp.json()
    for warning in answer.get("warnings") or []:
        print(f"warning: {warning}")
    print(f"[{answer['model']}, {answer['usage']['completion_tokens']} tokens, {answer['finish_reason']}]")
    print(answer["text"])


if __name__ == "__main__":
    run_script(main)
