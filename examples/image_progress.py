"""An image with a live progress bar, through the Python SDK (`ris.Client`).

    python examples/image_progress.py [--url http://127.0.0.1:8080] [--prompt TEXT]
                                      [--width 256 --height 256 --steps 8] [--out image.png]

The image lane is a queue: `generate_image` returns at once with a task id, `wait` polls
`GET /api/image/progress/{task_id}` and calls back with each answer (status, step, ETA, queue
position), and `result` fetches the PNG.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from _common import api_key, parser, run_script

from ris import Client, RISError


def draw(progress: dict[str, Any]) -> None:
    width = 30
    filled = round(progress["progress"] * width)
    eta = progress.get("eta_s")
    queued = progress.get("queue_position")
    tail = f"queue position {queued}" if progress["status"] == "queued" and queued is not None else ""
    if not tail and eta is not None:
        tail = f"ETA {eta:.1f} s"
    bar = "#" * filled + "-" * (width - filled)
    total = progress.get("total_steps") or "?"
    sys.stdout.write(f"\r[{bar}] {progress['progress']:4.0%} step {progress['step']}/{total} {tail:<20}")
    sys.stdout.flush()


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--prompt", default="a red bicycle leaning on a blue door")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("image.png"))
    args = p.parse_args()
    with Client(args.url, api_key=api_key(), timeout=120) as client:
        try:
            task = client.generate_image(args.prompt, width=args.width, height=args.height, steps=args.steps)
            client.wait(task["task_id"], on_progress=draw, poll_s=0.2)
            client.result(task["task_id"], path=args.out)
        except RISError as e:
            print(f"\nerror: {e}", file=sys.stderr)
            raise SystemExit(1) from None
    print(f"\n{args.out}: {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    run_script(main)
