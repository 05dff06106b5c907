"""The HTTP status a task that ended without success answers with, by its error code (500
otherwise): one table for the server's answers and the SDK's exceptions, which must agree
whether a failure came as a response or inside a stream. No imports: the SDK loads it without
the server's packages."""

from __future__ import annotations

FAILURE_STATUS = {
    "deadline_exceeded": 504,
    "worker_timeout": 504,
    "worker_crashed": 503,
    "worker_out_of_memory": 503,  # the worker was replaced; the lane serves on
    # The task asked more of the lane's GPU budget than it holds; the worker serves on (an
    # LLM batch's worker is replaced: its sequences shared the step that failed).
    "gpu_out_of_memory": 507,
    # The task's result could not be written: the data folder's disk is full (as a record
    # that cannot be written is, NotRecorded); another write failure is result_not_stored, 500.
    "storage_full": 507,
    "cancelled": 409,
    "server_shutdown": 503,
    "lane_unavailable": 503,
    "lane_pending": 503,  # queued, then every worker of its lane began waiting for the cluster
    "queue_full": 429,
    # A configured model loaded on first use whose file or package is not on the machine (the
    # worker's finding: on a cluster the files are the nodes'): the model the client named is
    # not there, as a name not configured is not, and no retry brings it.
    "model_not_found": 404,
    "unknown_voice": 422,
    "nothing_to_speak": 422,
    "context_length_exceeded": 422,
    "invalid_request": 422,  # a request only the worker can judge (a model loaded on first use)
    "unsupported_for_model": 422,  # structured output or tools on a backend without grammars
    "schema_too_costly": 422,  # its grammar's work for one answer passed the worker's bound
    # The engine had no sound for the text's characters in that voice: symbols, digits of other
    # scripts ("\u0663"), spacing accents ("\u00b4"); over half of all symbol characters give
    # no audio in both engines. The text's doing, not the server's (the fuzzer found it as a
    # 500); an engine that fails is synthesis_failed or backend_error, 500.
    "synthesis_empty": 422,
}

# Failures a retry of the same request repeats, at the same cost: a worker that died under it
# (the request may be what killed it, and sent again it would take the replaced worker, and
# the requests batched on it, down again), a worker that hung on it, a deadline it ran out
# while running (the caller's timeout_s or the lane's request_timeout_s: sent again, it holds
# the lane as long and ends the same way; OpenAI's client sent a 504 three times; one that
# passed in the queue is answered plainly: the backlog may be gone, api.errors.task_error).
# Answered without Retry-After and with `x-should-retry: false`, which OpenAI's SDKs obey
# (they retry any 5xx otherwise); RIS's SDK does not retry them either. A cancelled task too:
# OpenAI's SDKs retry a 409, which ran an answer an operator (or the console) cancelled again,
# twice, before its caller heard of the cancel.
NOT_TO_RETRY = frozenset(
    {"worker_crashed", "worker_out_of_memory", "worker_timeout", "deadline_exceeded", "cancelled"}
)


# The failures that are the server's (a worker, an engine, the disk), not the request's: each
# lane's counter of them starts at 0 on /metrics, so an alert on its increase sees the first one
# after a start (a series born at 2, as a crash of two streams made it, shows no increase).
SERVER_FAILURES = (
    "worker_crashed",
    "worker_timeout",
    "worker_out_of_memory",
    "gpu_out_of_memory",
    "deadline_exceeded",
    "backend_error",
    "storage_full",
    "result_not_stored",
)


def failure_status(code: str) -> int:
    return FAILURE_STATUS.get(code, 500)
