"""The product description's image example, verbatim: queue a 512x512 turbo image in 4 steps,
poll `GET /api/image/progress/{task_id}` until it ends, and save the PNG.

    python examples/spec_image.py [--url http://127.0.0.1:8080] [--out spec_image.png]
                                  [--width 512 --height 512 --steps 4]

With no turbo model installed the default image model runs with the turbo settings and the
answer's `warnings` says so (docs/MODELS.md says how to get a real turbo model). The embedded default model is
an untrained tiny pipeline: its pictures are noise, the plumbing is real.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from _common import fail, headers, parser, run_script

# The description's prompt, as it wrote it ("a cute kitten").
PROMPT = "一只可爱的小猫"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, default=Path("spec_image.png"), help="where to write the PNG")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    request = {
        "prompt": PROMPT,
        "width": args.width,
        "height": args.height,
        "use_turbo": True,
        "steps": args.steps,
    }
    resp = httpx.post(f"{args.url}/api/image/generate", json=request, headers=headers(), timeout=60)
    if not resp.is_success:
        fail(resp)
    accepted = resp.json()
    for warning in accepted.get("warnings") or []:
        print(f"warning: {warning}")
    task_id = accepted["task_id"]
    print(f"queued {task_id}: {PROMPT}")
    while True:
        progress = httpx.get(f"{args.url}/api/image/progress/{task_id}", headers=headers(), timeout=30)
        if progress.status_code != 200:
            fail(progress)
        state = progress.json()
        print(
            f"{state['status']}: step {state['step']}/{state['total_steps'] or '?'} ({state['progress']:.0%})"
        )
        if state["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    if state["status"] != "succeeded":
        print(f"error: the task {state['status']}: {state.get('error')}")
        raise SystemExit(1)
    image = httpx.get(f"{args.url}/api/image/result/{task_id}", headers=headers(), timeout=60)
    if image.status_code != 200:
        fail(image)
    args.out.write_bytes(image.content)
    print(f"{args.out}: {len(image.content)} bytes")


if __name__ == "__main__":
    run_script(main)
