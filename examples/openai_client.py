"""The official `openai` Python client against RIS's OpenAI-compatible routes under `/v1`:
a streamed chat completion, speech, and an image. Needs `pip install openai`.

    python examples/openai_client.py [--url http://127.0.0.1:8080] [--model smollm2] [--out-dir .]

Chat model names are RIS's configured LLMs (`GET /v1/models`); OpenAI's voice names ("alloy",
...) map to voices of the configured TTS models; an image model name RIS does not have means its
default image model.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

from _common import api_key, parser
from openai import APIError, OpenAI


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", default="smollm2", help="a configured LLM (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=Path("."))
    p.add_argument("--size", default="256x256", help="image size (default: %(default)s)")
    args = p.parse_args()
    # The client insists on a key; any string does when the server has none configured.
    client = OpenAI(base_url=f"{args.url}/v1", api_key=api_key() or "not-needed", max_retries=0)
    try:
        print("models:", ", ".join(m.id for m in client.models.list()))
        stream = client.chat.completions.create(
            model=args.model,
            messages=[{"role": "user", "content": "Write one sentence about autumn."}],
            max_tokens=48,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
        speech = client.audio.speech.create(
            model="tts-1", voice="alloy", input="Hello from the OpenAI client.", response_format="wav"
        )
        wav = args.out_dir / "openai_speech.wav"
        wav.write_bytes(speech.content)
        print(f"{wav}: {wav.stat().st_size} bytes")
        image = client.images.generate(
            prompt="a small green frog", size=args.size, response_format="b64_json"
        )
        png = args.out_dir / "openai_image.png"
        if not image.data or not image.data[0].b64_json:
            raise SystemExit("error: the image answer carried no picture")
        png.write_bytes(base64.b64decode(image.data[0].b64_json))
        print(f"{png}: {png.stat().st_size} bytes")
    except APIError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
