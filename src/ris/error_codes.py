"""Every machine-readable error code the server, its workers, `ris pull` and the SDK give, with
the HTTP status it comes with and what it means: docs/API_REFERENCE.md's table is written from
it (python -m ris.api.reference), and a test reads the source for every code it raises, so a
new code cannot go undocumented nor a gone one stay listed (tests/unit/test_error_codes.py).
No imports: data only.

Statuses are the seed API's (/api/...); "/v1:" gives OpenAI's where it differs. A task's failure
(`error.code` of a task, a stream's `error` event) answers with its status where a response
still can (ris.failures.FAILURE_STATUS); "-": never an HTTP answer of its own.
"""

from __future__ import annotations

# Sections, in the order the reference shows them.
REQUEST = "The request"
ACCESS = "Access"
CAPACITY = "Capacity and availability"
TASK = "A task that ended without its result"
MODEL = "Models and workers"
PULL = "Pulling a model (`ris pull`, Ollama's `/api/pull`)"
SDK = "The Python SDK"

SECTIONS = (REQUEST, ACCESS, CAPACITY, TASK, MODEL, PULL, SDK)

# code: (section, status, meaning)
ERROR_CODES: dict[str, tuple[str, str, str]] = {
    # ----- the request ----------------------------------------------------------------------
    "invalid_request": (
        REQUEST,
        "422 (/v1: 400)",
        "a field out of its range, of the wrong type or missing; the message names it and what is "
        "allowed (also a request only the worker can judge, for a model loaded on first use)",
    ),
    "invalid_value": (
        REQUEST,
        "400",
        "/v1 and Ollama's routes: a value out of range that the server checks itself (max_tokens over "
        "the context, stop strings); a field of the wrong type or range reads invalid_request",
    ),
    "bad_request": (REQUEST, "400", "a malformed HTTP request (several Host headers)"),
    "body_too_large": (
        REQUEST,
        "413",
        "the body is over server.max_body_bytes, with or without Content-Length",
    ),
    "body_timeout": (REQUEST, "408", "the body's next part did not come within 20 s"),
    "prompt_too_long": (
        REQUEST,
        "413 (/v1: context_length_exceeded, 400)",
        "the prompt is over server.max_prompt_chars",
    ),
    "context_length_exceeded": (
        REQUEST,
        "422 (/v1: 400)",
        "the prompt and max_tokens do not fit the model's context window, as its worker finds (on /v1 "
        "also a prompt over server.max_prompt_chars: OpenAI's code)",
    ),
    "text_too_long": (REQUEST, "413", "text to speak over server.max_tts_chars"),
    "input_too_long": (REQUEST, "400", "/v1/audio/speech's name for text_too_long (OpenAI's)"),
    "image_too_large": (REQUEST, "422", "width x height over server.max_image_pixels"),
    "too_many_steps": (REQUEST, "422", "more denoising steps than server.max_image_steps"),
    "batch_too_large": (
        REQUEST,
        "400",
        "n images at once that the lane never holds together (its queue and slots); x-should-retry: false",
    ),
    "unknown_parameter": (REQUEST, "400", "/v1: a field OpenAI's API does not have"),
    "unsupported_parameter": (
        REQUEST,
        "400",
        "a field of OpenAI's or Ollama's API this server does not serve",
    ),
    "unsupported_content": (REQUEST, "400", "/v1: a message part other than text (images, audio in a chat)"),
    "unsupported_schema": (
        REQUEST,
        "400",
        "/v1 with strict: a tool's or response format's JSON schema with keywords no grammar enforces",
    ),
    "unsupported_for_model": (
        REQUEST,
        "422",
        "structured output or tools asked of a backend that cannot constrain its output",
    ),
    "schema_too_costly": (
        REQUEST,
        "422",
        "the JSON schema's grammar took more work for one answer than the worker's bound",
    ),
    "unsupported_endpoint": (
        REQUEST,
        "400",
        "an OpenAI or Ollama route this server does not serve; the message lists those it does",
    ),
    "unknown_lane": (REQUEST, "422", "GET /ready?lane= naming a lane this server does not have"),
    "unknown_voice": (REQUEST, "422", "a voice the model does not speak; the message lists its voices"),
    "nothing_to_speak": (REQUEST, "422 (/v1: 400)", "text with no letter, digit or symbol"),
    "synthesis_empty": (
        REQUEST,
        "422 (500 for a stream that ended with no audio and no reason)",
        "text the voice has no sound for (many symbols, digits of other scripts)",
    ),
    "not_acceptable": (
        REQUEST,
        "406",
        "Accept names no audio type served here; the message lists those served",
    ),
    "model_wrong_lane": (REQUEST, "422 (/v1: 400)", "a model of another lane (an image model for a chat)"),
    "unknown_model": (
        REQUEST,
        "404 (/v1 and Ollama's routes: model_not_found); 503 with x-should-retry: false when no model "
        "is named and the lane has no default",
        "a model name the config does not have; the message lists the configured ones",
    ),
    "not_found": (REQUEST, "404", "no such task (or another user's), route or file"),
    "task_not_finished": (REQUEST, "409", "DELETE of a task still queued or running"),
    "task_expired": (
        REQUEST,
        "410",
        "a task the retention policy removed (older than max_age_h, or over max_total_mb); the "
        "message says when and why; after 7 days its id answers not_found",
    ),
    "not_ready": (REQUEST, "409", "a result asked for while its task runs; the body gives the progress"),
    "internal_error": (REQUEST, "500", "a defect of the server's; the log has the traceback"),
    # ----- access ---------------------------------------------------------------------------
    "unauthorized": (ACCESS, "401", "no API key, or a wrong one (WWW-Authenticate: Bearer)"),
    "url_expired": (
        ACCESS,
        "401",
        "a signed result URL past its hour; GET /api/tasks/{id} gives a fresh one",
    ),
    "url_invalid": (
        ACCESS,
        "401",
        "a result URL whose signature this server did not make (or its keys changed)",
    ),
    "too_many_wrong_keys": (
        ACCESS,
        "429",
        "this address sent too many wrong keys; Retry-After says when it may try again (keys it used "
        "rightly still pass)",
    ),
    "admin_only": (ACCESS, "403", "a route for admin keys (/metrics, pulling a model) asked with a user key"),
    "host_not_allowed": (ACCESS, "403", "a Host header not in server.allowed_hosts (DNS rebinding)"),
    "origin_not_allowed": (ACCESS, "403", "a browser Origin not in server.allowed_origins"),
    # ----- capacity and availability ------------------------------------------------------
    "queue_full": (CAPACITY, "429", "the lane's queue is full; Retry-After says when to try again"),
    "server_memory_full": (
        CAPACITY,
        "503",
        "the API process is over server.memory_limit_mb; Retry-After, until it is back under",
    ),
    "lane_unavailable": (
        CAPACITY,
        "503",
        "the lane is off in the config (x-should-retry: false) or its worker cannot start now (Retry-After)",
    ),
    "lane_pending": (
        CAPACITY,
        "503",
        "a cluster has not placed the lane's worker; the message says what it asks for and what is free",
    ),
    "server_shutdown": (
        CAPACITY,
        "503",
        "the server is stopping; a durable task is kept and resumes at the next start",
    ),
    "storage_full": (
        CAPACITY,
        "507",
        "the data folder's disk is full: the task's record (nothing queued) or result was not written",
    ),
    "store_unavailable": (
        CAPACITY,
        "503",
        "the task store failed otherwise (the message gives the OS's words)",
    ),
    "result_not_stored": (TASK, "500", "the task's result file could not be written, the disk not full"),
    # ----- a task that ended without its result ---------------------------------------------
    "cancelled": (
        TASK,
        "409",
        "the task was cancelled (by its client, an operator or the console); x-should-retry: false",
    ),
    "task_failed": (
        TASK,
        "409",
        "a result asked for of a task that failed; the message gives the task's own error",
    ),
    "deadline_exceeded": (
        TASK,
        "504",
        "the task ran out its timeout_s or the lane's request_timeout_s (running: x-should-retry: false)",
    ),
    "worker_timeout": (TASK, "504", "the worker hung on the task and was replaced; x-should-retry: false"),
    "worker_crashed": (TASK, "503", "the worker died under the task and was replaced; x-should-retry: false"),
    "worker_out_of_memory": (
        TASK,
        "503",
        "the worker ran out of its memory limit and was replaced; x-should-retry: false",
    ),
    "gpu_out_of_memory": (
        TASK,
        "507",
        "the task or its model's load needed more than the lane's GPU budget or the card; the lane serves on",
    ),
    "backend_error": (
        TASK,
        "500",
        "the engine failed (llama.cpp, transformers, the TTS engine); the message says how",
    ),
    "synthesis_failed": (TASK, "500", "the speech engine failed"),
    "synthesis_timeout": (TASK, "500", "pyttsx3's engine was busy or did not finish"),
    "speaking_failed": (TASK, "500", "/api/chat/speak's pipeline failed between the LLM and speech"),
    # ----- models and workers (a worker's start; a model loaded on first use fails its task) --
    "model_not_found": (
        MODEL,
        "404",
        "a configured model whose file or package is not on the machine (the message names the path); "
        "on /v1 and Ollama's routes also a name the config does not have (OpenAI's and Ollama's code)",
    ),
    "model_source_missing": (
        MODEL,
        "500",
        "a model whose backend needs a source file or folder and has none",
    ),
    "model_config_missing": (MODEL, "500", "an image model folder without the config its pipeline needs"),
    "model_too_large": (MODEL, "500", "a model larger than the lane's whole memory budget"),
    "bad_model": (
        MODEL,
        "500",
        "a model source the backend cannot load (a folder for llama.cpp, a wrong dtype)",
    ),
    "model_load_failed": (MODEL, "500", "the model's load raised; the message gives the library's words"),
    "unknown_backend": (MODEL, "-", "a backend name no lane has (config check)"),
    "backend_unavailable": (
        MODEL,
        "500",
        "the backend's library is missing or cannot start (espeak-ng, pyttsx3)",
    ),
    "backend_conflict": (
        MODEL,
        "500",
        "two TTS engines in one worker that cannot share it (espeak-ng and pyttsx3)",
    ),
    "worker_start_failed": (
        MODEL,
        "-",
        "a Ray actor did not start (cluster mode); the lane waits and retries",
    ),
    # ----- pulling a model -------------------------------------------------------------------
    "pull_failed": (PULL, "the pull's own", "Ollama's /api/pull failed; the message says why"),
    "unavailable": (PULL, "404", "a catalogue model this machine cannot use (no backend for it installed)"),
    "hub_unreachable": (PULL, "502", "the model hub could not be reached"),
    "hub_error": (PULL, "502", "the hub refused the repository or gave no commit"),
    "download_failed": (PULL, "502", "a file's download broke off; the same command resumes it"),
    "checksum_mismatch": (PULL, "502", "a downloaded file is not the one the hub lists"),
    "config_error": (PULL, "500", "config.json cannot be read or is not a JSON object"),
    "config_invalid": (PULL, "500", "with the model added, the config would not load"),
    "config_not_written": (PULL, "500", "config.json could not be rewritten"),
    "no_config_file": (
        PULL,
        "400",
        "the server runs without a config file, so a pull has nowhere to add the model",
    ),
    # ----- the SDK ----------------------------------------------------------------------------
    "http_error": (
        SDK,
        "the answer's",
        "an error answer without RIS's error body (a proxy's page, another server); the message is its text",
    ),
    "stream_incomplete": (
        SDK,
        "502 (the SDK's)",
        "a stream ended with neither its end nor an error (the server stopped mid-answer)",
    ),
}
