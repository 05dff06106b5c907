"""The HTTP routes, one file per lane or purpose:

llm.py           POST /api/llm/generate
tts.py           POST /api/tts/synthesize, GET /api/tts/audio/{id}
image.py         /api/image/generate, progress, result, cancel, tasks
speak.py         POST /api/chat/speak (the pipeline itself: ris.services.speaking)
tasks.py         /api/tasks, /api/tasks/{id}, /api/tasks/{id}/cancel
ops.py           /health, /ready, /api/stats, /metrics, /api/models
openai_text.py   /v1/models, /v1/chat/completions, /v1/completions
openai_media.py  /v1/audio/speech, /v1/images/generations
docs.py          /docs, /redoc and their files, served here (no CDN)
console.py       /, /ui (the web console's pages, login, files), /api/console/state
"""

from fastapi import APIRouter

from ris.api.routes import console, docs, image, llm, openai_media, openai_text, ops, speak, tasks, tts

ROUTERS: tuple[APIRouter, ...] = tuple(
    m.router for m in (llm, tts, image, speak, tasks, ops, openai_text, openai_media, docs, console)
)
