"""The LLM lane's concurrent runner over a scripted batch (no model): tasks join between steps
up to the batch's room, each ends on its own, a failing step fails only its batch's tasks, a
single-stream backend waits for the batch, and the lane's phase on the board is PREFILL while
any sequence prefills. The batch itself, on the real model: tests/backends/."""

from __future__ import annotations

from ris.lanes.base import BackendError
from ris.lanes.llm import LLMBackend, LLMBatch, LLMOutcome, LLMRequest, LLMRunner, StepFailed, TextOutput
from ris.messages import EngineFigures
from ris.preemption.policy import Activity

from .fakes import Env


class ScriptedBatch(LLMBatch):
    """Each sequence prefills for `prefill_steps` steps, then emits one token per step."""

    def __init__(self, slots: int, prefill_steps: int = 1) -> None:
        self.slots = slots
        self.prefill_steps = prefill_steps
        self.seqs: dict[str, list[int]] = {}  # key -> [prefill steps left, tokens left]
        self.outs: dict[str, TextOutput] = {}
        self.fail_next = False

    def free(self) -> int:
        return self.slots - len(self.seqs)

    @property
    def active(self) -> int:
        return len(self.seqs)

    @property
    def prefilling(self) -> bool:
        return any(left > 0 for left, _ in self.seqs.values())

    def add(self, key: str, req: LLMRequest, out: TextOutput) -> None:
        if req.prompt == "bad":
            raise BackendError("context_length_exceeded", "too long")
        self.seqs[key] = [self.prefill_steps, req.max_tokens]
        self.outs[key] = out

    def step(self) -> list[tuple[str, LLMOutcome | BackendError]]:
        if self.fail_next:
            raise RuntimeError("decode failed")
        ended: list[tuple[str, LLMOutcome | BackendError]] = []
        for key, state in list(self.seqs.items()):
            out = self.outs[key]
            if out.cancelled():
                del self.seqs[key]
                ended.append((key, LLMOutcome("cancelled", 1, 0)))
            elif state[0] > 0:
                state[0] -= 1
            else:
                out.emit("t")
                state[1] -= 1
                if state[1] == 0:
                    del self.seqs[key]
                    ended.append((key, LLMOutcome("length", 1, 1)))
        return ended

    def abort(self) -> list[str]:
        keys = list(self.seqs)
        self.seqs.clear()
        return keys


class Batched(LLMBackend):
    def __init__(self, batch: ScriptedBatch) -> None:
        self._batch = batch

    def batch(self) -> ScriptedBatch:
        return self._batch

    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        raise AssertionError("a batching backend's tasks go to its batch")


class SingleStream(LLMBackend):
    def __init__(self) -> None:
        self.runs = 0

    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        self.runs += 1
        out.emit("x")
        return LLMOutcome("stop", 1, 1)


def never() -> bool:
    return False


def test_tasks_join_between_steps_up_to_the_room_and_end_each_on_its_own() -> None:
    batch, env = ScriptedBatch(slots=2), Env()
    runner = LLMRunner(env.worker_env())
    backend = Batched(batch)
    runner.admit(backend, "a", LLMRequest(prompt="a", max_tokens=1), never)
    runner.admit(backend, "b", LLMRequest(prompt="b", max_tokens=3), never)
    runner.admit(backend, "c", LLMRequest(prompt="c", max_tokens=1), never)
    assert runner.step() == [] and set(batch.seqs) == {"a", "b"}  # c waits for room
    assert [k for k, _ in runner.step()] == ["a"]  # a ends; b goes on
    runner.step()
    assert set(batch.seqs) == {"b", "c"}  # c joined the running batch between steps
    ended = [k for _ in range(5) for k, _ in runner.step()]
    assert sorted(ended) == ["b", "c"] and not runner.busy()


def test_the_board_shows_prefill_while_any_sequence_prefills() -> None:
    batch, env = ScriptedBatch(slots=2, prefill_steps=2), Env()
    runner, backend = LLMRunner(env.worker_env()), Batched(batch)
    runner.admit(backend, "a", LLMRequest(prompt="a", max_tokens=4), never)
    runner.step()
    runner.step()
    assert env.board == [Activity.PREFILL, Activity.DECODE]
    runner.admit(backend, "b", LLMRequest(prompt="b", max_tokens=1), never)
    runner.step()  # b prefills while a decodes: the lane is in prefill again
    assert env.board[-1] is Activity.PREFILL
    while runner.busy():
        runner.step()
    assert env.board[-2:] == [Activity.DECODE, Activity.IDLE]


def test_a_busy_mark_written_over_the_decode_phase_gives_way_to_it_at_the_next_step() -> None:
    """A lending LLM's worker marks a task busy as it arrives (BoardMarks.arrived), over the
    phase the runner wrote; the runner writes its phase again at its next step, so a lane
    yielding to it does not pause through the decode as if the LLM were prefilling."""
    batch, env = ScriptedBatch(slots=1), Env()
    runner, backend = LLMRunner(env.worker_env()), Batched(batch)
    runner.admit(backend, "a", LLMRequest(prompt="a", max_tokens=4), never)
    runner.step()
    assert env.board[-1] is Activity.DECODE
    env.show(Activity.BUSY)  # b arrives; the batch has no room for it
    runner.admit(backend, "b", LLMRequest(prompt="b", max_tokens=1), never)
    runner.step()
    assert env.board[-1] is Activity.DECODE and set(batch.seqs) == {"a"}


def test_a_cancel_ends_one_sequence_and_a_refused_request_fails_alone() -> None:
    batch, env = ScriptedBatch(slots=3), Env()
    runner = LLMRunner(env.worker_env())
    cancelled = {"b": False}
    backend = Batched(batch)
    runner.admit(backend, "a", LLMRequest(prompt="a", max_tokens=3), never)
    runner.admit(backend, "b", LLMRequest(prompt="b", max_tokens=3), lambda: cancelled["b"])
    runner.admit(backend, "c", LLMRequest(prompt="bad"), never)
    first = runner.step()
    assert [(k, type(r).__name__) for k, r in first] == [("c", "BackendError")]
    cancelled["b"] = True
    ended = dict(runner.step())
    assert isinstance(ended["b"], LLMOutcome) and ended["b"].finish_reason == "cancelled"
    assert "a" in batch.seqs  # the others go on


def test_a_failing_step_fails_its_batch_and_the_worker_serves_on() -> None:
    batch, env = ScriptedBatch(slots=2), Env()
    runner = LLMRunner(env.worker_env())
    backend = Batched(batch)
    for key in ("a", "b"):
        runner.admit(backend, key, LLMRequest(prompt=key, max_tokens=5), never)
    batch.fail_next = True
    ended = runner.step()
    assert sorted(k for k, _ in ended) == ["a", "b"]
    assert all(isinstance(r, BackendError) and r.code == "backend_error" for _, r in ended)
    batch.fail_next = False
    runner.admit(backend, "c", LLMRequest(prompt="c", max_tokens=1), never)
    assert [k for _ in range(3) for k, _ in runner.step()] == ["c"]


def test_a_step_that_fails_after_a_sequence_ended_reports_that_one_too() -> None:
    """The batch dropped a cancelled sequence, then its decode failed: abort() knows only the
    others, so the failure carries the cancelled one (StepFailed), and every task ends."""

    class CancelThenFail(ScriptedBatch):
        def step(self) -> list[tuple[str, LLMOutcome | BackendError]]:
            del self.seqs["gone"]
            raise StepFailed([("gone", LLMOutcome("cancelled", 1, 0))], RuntimeError("decode failed"))

    batch, env = CancelThenFail(slots=2), Env()
    runner, backend = LLMRunner(env.worker_env()), Batched(batch)
    for key in ("gone", "stays"):
        runner.admit(backend, key, LLMRequest(prompt=key, max_tokens=5), never)
    ended = dict(runner.step())
    assert isinstance(ended["gone"], LLMOutcome) and ended["gone"].finish_reason == "cancelled"
    assert isinstance(ended["stays"], BackendError) and "decode failed" in ended["stays"].message


def test_an_unloaded_backends_batch_is_let_go_and_a_new_one_gets_its_own() -> None:
    """The model cache tells the runner of each unload (ModelCache.unloading): the batch, which
    holds its backend, goes with it, and a reload of the model gets a batch of its own."""
    from ris.config.schema import LaneConfig, ModelSpec
    from ris.runtime.model_cache import ModelCache

    env = Env()
    runner = LLMRunner(env.worker_env())
    built: list[Batched] = []

    def construct(name: str) -> Batched:
        built.append(Batched(ScriptedBatch(slots=1)))
        return built[-1]

    cache = ModelCache(
        LaneConfig(default_model="m", models={"m": ModelSpec(backend="noop")}),
        "cpu",
        None,
        construct,
        lambda _: None,
    )
    cache.unloading.append(runner.forget)
    first = cache.get("m", announce=False)
    assert isinstance(first, Batched)
    assert runner.run(first, "a", LLMRequest(prompt="a", max_tokens=1), never).finish_reason == "length"
    cache.unload("m", "expired")
    assert runner._batches == {}  # noqa: SLF001 - what would keep the backend
    second = cache.get("m", announce=False)
    assert isinstance(second, Batched)
    assert runner.run(second, "b", LLMRequest(prompt="b", max_tokens=1), never).finish_reason == "length"
    assert [id(b) for b in runner._batches.values()] == [id(built[1].batch())]  # noqa: SLF001


def test_a_bound_over_the_context_of_a_model_loaded_on_first_use_becomes_the_context() -> None:
    """The API checks max_tokens against the context of a model its worker reported; a model
    loaded on first use is checked here. A bound (Ollama's num_predict, no limit asked) is cut
    to the context; a demand (OpenAI's max_tokens) is refused, as the API would."""

    class Recording(ScriptedBatch):
        def add(self, key: str, req: LLMRequest, out: TextOutput) -> None:
            asked[key] = req.max_tokens
            super().add(key, req, out)

    asked: dict[str, int] = {}
    batch, env = Recording(slots=2, prefill_steps=0), Env()
    runner, backend = LLMRunner(env.worker_env()), Batched(batch)
    backend.context_tokens = 3
    runner.admit(backend, "bound", LLMRequest(prompt="a", max_tokens=50, max_tokens_at_most=True), never)
    runner.admit(backend, "demand", LLMRequest(prompt="b", max_tokens=50), never)
    ended = dict(runner.step())
    assert isinstance(ended["demand"], BackendError) and "context of 3 tokens" in ended["demand"].message
    assert asked == {"bound": 3}
    while runner.busy():
        ended.update(runner.step())
    assert isinstance(ended["bound"], LLMOutcome) and ended["bound"].finish_reason == "length"


def test_a_single_stream_backend_runs_alone_after_the_batch() -> None:
    batch, env = ScriptedBatch(slots=2), Env()
    runner = LLMRunner(env.worker_env())
    single = SingleStream()
    runner.admit(Batched(batch), "a", LLMRequest(prompt="a", max_tokens=2), never)
    runner.admit(single, "s", LLMRequest(prompt="s"), never)
    runner.step()
    assert single.runs == 0  # waits: the batch holds the model's memory
    ended = [k for _ in range(4) for k, _ in runner.step()]
    assert ended == ["a", "s"] and single.runs == 1


class TemplateRefuses(ScriptedBatch):
    def add(self, key: str, req: LLMRequest, out: TextOutput) -> None:
        if req.prompt == "roles out of order":
            raise ValueError("Conversation roles must alternate user/assistant")  # a Jinja template's
        super().add(key, req, out)


def test_a_request_the_backend_cannot_start_fails_alone_whatever_it_raises() -> None:
    batch, env = TemplateRefuses(slots=2), Env()
    runner, backend = LLMRunner(env.worker_env()), Batched(batch)
    runner.admit(backend, "ok", LLMRequest(prompt="a", max_tokens=2), never)
    runner.admit(backend, "bad", LLMRequest(prompt="roles out of order"), never)
    ended = dict(runner.step())
    assert isinstance(ended["bad"], BackendError) and "alternate" in ended["bad"].message
    assert "ok" in batch.seqs  # the worker and the other request go on


def test_single_stream_tasks_are_reported_one_by_one() -> None:
    env, single = Env(), SingleStream()
    runner = LLMRunner(env.worker_env())
    for key in ("s1", "s2", "s3"):
        runner.admit(single, key, LLMRequest(prompt=key), never)
    assert [k for k, _ in runner.step()] == ["s1"]  # not held back until s2 and s3 are done
    assert [k for k, _ in runner.step()] == ["s2"]
    assert [k for k, _ in runner.step()] == ["s3"]
    # The lane is busy from the first to the last: no idle moment between them.
    assert env.board[-1] is Activity.IDLE and Activity.IDLE not in env.board[:-1]


def test_the_workers_engine_figures_add_its_batches_and_keep_counting_past_an_unload() -> None:
    """The heartbeat's engine figures: every batch's counters since the worker started (a
    model unloaded keeps what it counted: a Prometheus counter must not fall), the gauges of
    the batches live now."""

    class Counting(ScriptedBatch):
        def __init__(self, steps: int) -> None:
            super().__init__(slots=2)
            self.steps = steps

        def figures(self) -> EngineFigures:
            return EngineFigures(
                decode_steps=self.steps,
                generated_tokens=2 * self.steps,
                sequences=len(self.seqs),
                kv_cache_tokens=10,
                kv_cache_capacity_tokens=100,
            )

    runner = LLMRunner(Env().worker_env())
    assert runner.figures() is None  # nothing counted yet: no figures, not zeros
    first, second = Batched(Counting(3)), Batched(Counting(5))
    runner.admit(first, "a", LLMRequest(prompt="a", max_tokens=2), never)
    runner.admit(second, "b", LLMRequest(prompt="b", max_tokens=2), never)
    runner.step()
    assert runner.figures() == EngineFigures(
        decode_steps=8, generated_tokens=16, sequences=2, kv_cache_tokens=20, kv_cache_capacity_tokens=200
    )
    while runner.busy():
        runner.step()
    runner.forget(first)  # its model unloaded: its counters stay, its cache is gone
    assert runner.figures() == EngineFigures(
        decode_steps=8, generated_tokens=16, sequences=0, kv_cache_tokens=10, kv_cache_capacity_tokens=100
    )
    runner.forget(second)
    assert runner.figures() == EngineFigures(decode_steps=8, generated_tokens=16)

    class Uncounted(ScriptedBatch):
        def figures(self) -> EngineFigures:
            return EngineFigures(kv_cache_capacity_tokens=64)  # made, nothing counted yet

    runner, uncounted = LLMRunner(Env().worker_env()), Batched(Uncounted(slots=1))
    runner.admit(uncounted, "c", LLMRequest(prompt="bad", max_tokens=1), never)  # refused at add
    runner.step()
    assert runner.figures() == EngineFigures(kv_cache_capacity_tokens=64)
    runner.forget(uncounted)
    # Zeros, not None: no figures would leave the last heartbeat's capacity standing.
    assert runner.figures() == EngineFigures()
    # A batch that counted and was forgotten between two heartbeats (keep_alive 0 on a short
    # request): no heartbeat saw it alive, its counters still count.
    runner, brief = LLMRunner(Env().worker_env()), Batched(Counting(4))
    runner.admit(brief, "d", LLMRequest(prompt="d", max_tokens=1), never)
    while runner.busy():
        runner.step()
    runner.forget(brief)
    assert runner.figures() == EngineFigures(decode_steps=4, generated_tokens=8)
