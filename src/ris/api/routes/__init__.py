"""The HTTP routes, one file per lane or purpose:

llm.py           POST /api/llm/generate
tts.py           POST /api/tts/synthesize, GET /api/tts/audio/{id}
image.py         /api/image/generate, progress, result, cancel, tasks
speak.py         POST /api/chat/speak (the pipeline itself: ris.services.speaking)
tasks.py         /api/tasks, /api/tasks/{id}, /api/tasks/{id}/cancel
ops.py           /health, /ready, /api/stats, /metrics, /api/models
openai_text.py   /v1/models, /v1/chat/completions, /v1/completions
openai_media.py  /v1/audio/speech, /v1/images/generations
openai_other.py  the rest of the openai client's calls: a 400 naming the call not served
docs.py          /docs, /redoc and their files, served here (no CDN)
console.py       /, /ui (the web console's pages, login, files), /api/console/state

The app (ris/api/app.py) gathers their routers. This file imports none of them: a module that
needs one route module's helper (the console's body needs tasks.task_info) then imports that
one, not every route, the console's own included.
"""
