"""The `local` backend: GGUF models run in-process by llama.cpp (through `llama-cpp-python`), never the network.

In-process rather than through llama.cpp's HTTP server: nothing to start, wait for or kill, no port that
another program could take or listen on, and a broken model file is an error in this process rather than
a server that never comes up. The engine sees the same `Backend` contract either way.

Every reply that asks for a JSON schema is generated under a llama.cpp grammar built from that schema, so it
parses, and an `enum` (the label set) can only be answered with one of its values. The grammar is compiled
here rather than by llama-cpp-python's `response_format` handling, because that one silently falls back to
"any JSON" when it cannot convert a schema, which would drop the label constraint without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import math
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from melt.llm.base import (
    BackendError,
    ChatReply,
    ChatRequest,
    RequestFailed,
    ResponseFormatRejected,
    RetryableError,
    audio_parts,
)
from melt.llm.model_assets import bundled_model_path, cached_sha256, check_gguf

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar

#: Context size when `n_ctx` is not fixed: enough for melt's prompts; grown when a prompt needs more.
DEFAULT_N_CTX = 2048

#: Sampling settings that make `temperature` mean what it means on OpenAI-compatible servers (plain softmax
#: sampling at that temperature), instead of llama.cpp's defaults (top-k 40, top-p 0.95, min-p 0.05), which
#: would make the temperature bands of simulated annotators narrower than asked.
SAMPLING = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}


def available_cores() -> int:
    """Cores this process may run on (respects CPU affinity and container cpusets, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


def default_threads() -> int:
    """Threads for llama.cpp when none are asked for: half the cores this process may use, fewer when the 1-minute
    load average says more of them are busy, at least one.

    llama.cpp's threads meet at a barrier after every step of every token, spinning while they wait: one thread
    the scheduler takes away holds up all the others, so a thread per core on a busy machine is many times
    slower than fewer threads (docs/local.md, "Threads", has the figures: 14x on 2 cores at load 4)."""
    cores = available_cores()
    try:
        busy = math.ceil(os.getloadavg()[0])
    except OSError:  # no load average on this platform
        busy = 0
    return max(1, min(cores // 2, cores - busy))


class LocalBackend:
    """A GGUF model run by llama.cpp in this process. `model_path=None` uses the bundled Gemma 3 270M.

    `n_ctx=None` sizes the context to the prompts (at least `DEFAULT_N_CTX`, at most what the model was trained
    with); a fixed `n_ctx` is never exceeded. The model is loaded on the first request. llama.cpp contexts are
    not thread-safe, so all work runs on one dedicated thread, one request after another; the event loop stays
    free meanwhile.

    Log probabilities are not returned (`ChatReply.logprobs` is None even when asked for): llama.cpp computes
    them only for a model loaded to keep the logits of every token, which costs n_ctx x vocabulary floats
    (2 GB for Gemma's 262k-token vocabulary at 2048 tokens) and a full vocabulary projection per prompt token.
    """

    name = "local"
    #: one llama.cpp context answers one request at a time: more in flight would only queue
    max_concurrency = 1

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
    ):
        self.bundled = model_path is None
        self.model_path = bundled_model_path() if model_path is None else check_gguf(model_path)
        self.model = self.model_path.name
        if n_ctx is not None and n_ctx < 16:
            raise BackendError(f"the context size must be at least 16 tokens, not {n_ctx} (--n-ctx)")
        self.fixed_n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self._llm: Llama | None = None
        self._grammars: dict[str, LlamaGrammar] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="melt-local")
        self._closed = False
        # Set by `abort()`: the generation in progress stops at its next token.
        self._abort = threading.Event()
        # Only needed when `complete_sync` is called directly from several threads (the engine goes through
        # the single-thread executor).
        self._lock = threading.Lock()

    @property
    def n_ctx(self) -> int | None:
        """The context size of the loaded model, None before the first request."""
        return self._llm.n_ctx() if self._llm is not None else None

    def identity(self) -> dict[str, Any]:
        """The model by name and by content: a different file under the same name is a different model."""
        return {"kind": self.name, "model": self.model, "model_sha256": cached_sha256(self.model_path)}

    def abort(self) -> None:
        """Stop the generation in progress at its next token (its request raises `RetryableError`); a run that
        is stopping has nothing to wait for here, since a local reply costs nothing."""
        self._abort.set()

    async def complete(self, request: ChatRequest) -> ChatReply:
        if self._closed:
            raise BackendError("the local backend is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.complete_sync, request)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Queued requests are dropped; one that is generating finishes first, since freeing the model under
        # llama.cpp's feet would crash the process.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._unload)
        self._executor.shutdown(wait=True, cancel_futures=True)

    def complete_sync(self, request: ChatRequest) -> ChatReply:
        """`complete`, blocking. For the benchmark and for callers without an event loop."""
        with self._lock:
            return self._complete(request)

    def _complete(self, request: ChatRequest) -> ChatReply:
        if audio_parts(request.messages):
            raise BackendError(
                f"{self.model} is a text model run by llama.cpp and cannot take audio: --audio needs a server "
                "with an audio-language model (--base-url)"
            )
        messages = [dict(m) for m in request.messages]
        llm = self._ensure_loaded(DEFAULT_N_CTX if self.fixed_n_ctx is None else self.fixed_n_ctx)
        prompt_tokens = self._count_prompt_tokens(llm, messages)
        # llama.cpp needs the prompt plus at least one generated token in the context; a reply cut short by the
        # end of the context would be truncated JSON, so the whole max_tokens budget must fit.
        needed = prompt_tokens + (request.max_tokens or 1)
        if needed > llm.n_ctx():
            llm = self._grow_context(needed, prompt_tokens, request.max_tokens)
        kwargs: dict[str, Any] = dict(SAMPLING)
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if self._abort.is_set():
            raise RetryableError("aborted: the run is stopping")
        llm.abort_event = self._abort
        try:
            out = llm.create_chat_completion(
                messages=messages,
                grammar=self._grammar(llm, request.response_format),
                max_tokens=request.max_tokens,
                seed=request.seed,
                **kwargs,
            )
        except GenerationAborted as exc:
            raise RetryableError("aborted: the run is stopping") from exc
        except (RuntimeError, ValueError) as exc:
            raise BackendError(f"llama.cpp failed to generate with {self.model_path}: {exc}") from exc
        choice = out["choices"][0]
        usage = out["usage"]
        return ChatReply(
            content=choice["message"]["content"] or "",
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            finish_reason=choice.get("finish_reason"),
            extra={"n_ctx": llm.n_ctx(), "n_threads": self.n_threads},
        )

    # -- model and context ---------------------------------------------------------------------------------

    def _ensure_loaded(self, n_ctx: int) -> Llama:
        return self._llm if self._llm is not None else self._load(n_ctx)

    def _load(self, n_ctx: int) -> Llama:
        from llama_cpp import llama_chat_format

        self._unload()
        # llama.cpp rounds the context up to a multiple of 256 but llama-cpp-python sizes its token buffer by
        # the number asked for, and overflows it past that: ask for what llama.cpp will use.
        n_ctx = -(-n_ctx // 256) * 256
        llm = open_llama(self.model_path, n_ctx=n_ctx, n_threads=self.n_threads)
        # The prompt is rendered by a formatter kept here, and llama-cpp-python is told to use the same one,
        # so that the tokens counted before generating are exactly the tokens it generates from.
        self._formatter = _chat_formatter(llm, llama_chat_format)
        llm.chat_handler = llama_chat_format.chat_formatter_to_chat_completion_handler(self._formatter)
        self._llm = llm
        self._grammars.clear()
        return llm

    def _unload(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    def _count_prompt_tokens(self, llm: Llama, messages: list[dict[str, str]]) -> int:
        try:
            rendered = self._formatter(messages=messages)
        except Exception as exc:  # a chat template's raise_exception, or a Jinja error in the template
            raise BackendError(f"the chat template of {self.model} rejects these messages: {exc}") from exc
        tokens = llm.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True
        )
        return len(tokens)

    def _grow_context(self, needed: int, prompt_tokens: int, max_tokens: int | None) -> Llama:
        assert self._llm is not None
        trained = self._llm._model.n_ctx_train()
        what = f"the prompt takes {prompt_tokens} tokens" + (
            f" and the reply up to {max_tokens} more" if max_tokens else ""
        )
        # One over-long prompt fails its own request, not the run.
        if self.fixed_n_ctx is not None:
            hint = f"raise --n-ctx to at least {needed}" if needed <= trained else "shorten the prompt"
            raise RequestFailed(
                f"{what}, but the context size is {self._llm.n_ctx()} tokens (--n-ctx): {hint} "
                f"(model {self.model} was trained with a context of {trained} tokens)"
            )
        if needed > trained:
            raise RequestFailed(
                f"{what}, but model {self.model} has a context of only {trained} tokens: shorten the prompt "
                "(fewer context utterances) or lower the reply's max tokens, or use a model with a longer context"
            )
        size = DEFAULT_N_CTX
        while size < needed:
            size *= 2
        return self._load(min(size, trained))

    # -- answer format ---------------------------------------------------------------------------------------

    def _grammar(self, llm: Llama, response_format: dict[str, Any] | None) -> LlamaGrammar | None:
        if response_format is None:
            return None
        kind = response_format.get("type")
        if kind == "json_schema":
            schema = response_format.get("json_schema", {}).get("schema")
        elif kind == "json_object":
            schema = response_format.get("schema")  # llama.cpp's own form; OpenAI's has no schema
        elif kind == "text":
            return None
        else:
            raise ResponseFormatRejected(f"the local backend does not know the response format {kind!r}")
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = _compile_grammar(llm, schema)
        return self._grammars[key]


def open_llama(path: Path, *, n_ctx: int, n_threads: int, stock_sampler: bool = False) -> Llama:
    """A `llama_cpp.Llama` for a checked GGUF path, quiet, with llama.cpp's failure turned into a `BackendError`.

    Grammar-constrained generation uses `GrammarCheckedSampler`, unless `stock_sampler` (for the benchmark's
    baseline), which keeps llama-cpp-python's own."""
    try:
        import llama_cpp
        from llama_cpp import llama_cpp as lib
    except ImportError as exc:
        raise BackendError(
            "the local backend needs llama-cpp-python: pip install 'melt-toolkit[local]'"
        ) from exc
    _capture_llama_log(lib)
    _LLAMA_ERRORS.clear()
    try:
        with without_amx_kernels():
            return (llama_cpp.Llama if stock_sampler else _llama_class())(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                verbose=False,
            )
    except (ValueError, RuntimeError, OSError) as exc:
        detail = "; ".join(_LLAMA_ERRORS) or str(exc)
        raise BackendError(
            f"llama.cpp cannot load this model ({detail}): the file may be truncated or damaged, or made for "
            "a model architecture this llama-cpp-python build does not know",
            file=path,
        ) from exc


@contextlib.contextmanager
def without_amx_kernels() -> Iterator[None]:
    """Models loaded inside this block (by `Llama`, or by llama-cpp-python's server) avoid llama.cpp's AMX kernels.

    llama.cpp's AMX matrix kernels (compiled in by a native build on CPUs with AMX) crash with a segmentation
    fault on the first decode of Q4_K models. The "extra buffer types" are what route weights to them; `Llama()`
    offers no argument for it, hence the swapped defaults while it loads. Without AMX this does nothing."""
    from llama_cpp import llama_cpp as lib

    default_params = lib.llama_model_default_params
    if b"AMX_INT8 = 1" in lib.llama_print_system_info():

        def default_params_without_amx() -> Any:
            params = default_params()
            params.use_extra_bufts = False
            return params

        lib.llama_model_default_params = default_params_without_amx
    try:
        yield
    finally:
        lib.llama_model_default_params = default_params


class GenerationAborted(Exception):
    """Raised between two tokens once the backend's abort event is set."""


@functools.cache
def _llama_class() -> type[Llama]:
    from llama_cpp import Llama

    class GrammarCheckedLlama(Llama):
        abort_event: threading.Event | None = None

        def _init_sampler(self, *args: Any, grammar: LlamaGrammar | None = None, **kwargs: Any) -> Any:
            chain = super()._init_sampler(*args, grammar=None, **kwargs)
            return chain if grammar is None else GrammarCheckedSampler(self, chain, grammar)

        def sample(self, *args: Any, **kwargs: Any) -> Any:
            # Checked once per token: a stopping run does not wait for a long reply nobody will use.
            if self.abort_event is not None and self.abort_event.is_set():
                raise GenerationAborted
            return super().sample(*args, **kwargs)

    return GrammarCheckedLlama


class GrammarCheckedSampler:
    """Grammar-constrained sampling the way llama.cpp's own tools do it (common/sampling.cpp): draw a token
    without the grammar, keep it if the grammar accepts it, else draw again from the grammar-filtered
    distribution. That is rejection sampling, so the tokens follow the same distribution as filtering first;
    but it checks one token per step instead of the whole vocabulary, which llama-cpp-python's sampler chain
    does, at about a second per token on 2 cores for Gemma's 262k-token vocabulary."""

    def __init__(self, llm: Llama, chain: Any, grammar: LlamaGrammar):
        import numpy as np
        from llama_cpp import llama_cpp as lib

        self._lib = lib
        self._chain = chain  # llama-cpp-python's sampler chain without the grammar
        self._grammar = lib.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self._grammar:
            raise ValueError("llama.cpp cannot parse the grammar")
        n_vocab = llm.n_vocab()
        self._n_vocab = n_vocab
        dtype = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
        assert dtype.itemsize == ctypes.sizeof(lib.llama_token_data)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._all = np.zeros(n_vocab, dtype=dtype)
        self._one = np.zeros(1, dtype=dtype)
        pointer = ctypes.POINTER(lib.llama_token_data)
        self._all_array = lib.llama_token_data_array(
            data=self._all.ctypes.data_as(pointer), size=n_vocab, selected=-1, sorted=False
        )
        self._one_array = lib.llama_token_data_array(
            data=self._one.ctypes.data_as(pointer), size=1, selected=-1, sorted=False
        )

    def sample(self, ctx: Any, idx: int = -1) -> int:
        import numpy as np

        lib = self._lib
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx.ctx, idx), shape=(self._n_vocab,))
        token = self._draw(logits, constrained=False)
        self._one[0] = (token, 0.0, 0.0)
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        lib.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        if self._one["logit"][0] == -np.inf:
            token = self._draw(logits, constrained=True)
        lib.llama_sampler_accept(self._grammar, token)
        self._chain.accept(token)
        return token

    def _draw(self, logits: Any, *, constrained: bool) -> int:
        lib, array = self._lib, self._all_array
        self._all["id"] = self._ids
        self._all["logit"] = logits
        self._all["p"] = 0.0
        array.size, array.selected, array.sorted = self._n_vocab, -1, False
        if constrained:
            lib.llama_sampler_apply(self._grammar, ctypes.byref(array))
        lib.llama_sampler_apply(self._chain.sampler, ctypes.byref(array))
        return int(array.data[array.selected].id)

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._grammar, token)
        self._chain.accept(token)

    def reset(self) -> None:
        self._lib.llama_sampler_reset(self._grammar)
        self._chain.reset()

    def close(self) -> None:
        if self._grammar:
            self._lib.llama_sampler_free(self._grammar)
            self._grammar = None
        self._chain.close()

    def __del__(self) -> None:
        self.close()


#: llama.cpp's recent error lines, quoted when loading fails (its exception only says "Failed to load model").
_LLAMA_ERRORS: deque[str] = deque(maxlen=4)
_log_callback: Any = None
_GGML_LOG_LEVEL_ERROR = 4


def _capture_llama_log(lib: Any) -> None:
    """Route llama.cpp's log away from standard error (melt's output is its own), keeping error lines.

    llama-cpp-python's own callback prints some warnings even with verbose=False (it maps ggml's log levels
    as they were before WARN moved to 3)."""
    global _log_callback
    if _log_callback is not None:
        return

    @lib.llama_log_callback
    def keep_errors(level: int, text: bytes, user_data: Any) -> None:
        if level == _GGML_LOG_LEVEL_ERROR:
            _LLAMA_ERRORS.append(text.decode("utf-8", "replace").strip())

    lib.llama_log_set(keep_errors, ctypes.c_void_p(0))
    _log_callback = keep_errors  # ctypes callbacks must stay referenced while C may call them


#: Gemma's chat template (Google's, for text messages), for Gemma GGUFs that carry none, such as the bundled
#: base model: llama-cpp-python's fallbacks would be Llama 2's format, or its "gemma" one, which drops the
#: system message. Gemma has no system turn; the system text opens the first user turn.
GEMMA_CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}
{{- message['content'] | trim }}
{{- '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{ '<start_of_turn>model\n' }}
{%- endif -%}
"""


def _chat_formatter(llm: Llama, llama_chat_format: Any) -> Any:
    """The GGUF's chat template; Gemma's for a Gemma model without one; else llama-cpp-python's default."""
    template = llm.metadata.get("tokenizer.chat_template")
    if template is None and llm.metadata.get("general.architecture", "").startswith("gemma"):
        template = GEMMA_CHAT_TEMPLATE
    if template is None:
        return llama_chat_format.format_llama2
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    piece = lambda token: llm._model.token_get_text(token) if token != -1 else ""  # noqa: E731
    return llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=piece(eos_id), bos_token=piece(bos_id), stop_token_ids=[eos_id]
    )


def _compile_grammar(llm: Llama, schema: dict[str, Any] | None) -> LlamaGrammar:
    """A llama.cpp grammar for a JSON schema (any JSON when there is none), checked by llama.cpp's parser.

    Raises `ResponseFormatRejected` when the schema cannot be expressed, so the engine falls back to a weaker
    answer format and validates the replies itself. Keywords the converter ignores (numeric bounds, `not`,
    `if`/`then`, `uniqueItems`, ...) make the grammar looser than the schema, never stricter: the engine's
    validation of every reply still applies them."""
    import llama_cpp
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    try:
        grammar = (
            LlamaGrammar.from_string(JSON_GBNF, verbose=False)
            if schema is None
            else LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        )
    except Exception as exc:  # the converter raises ValueError, AssertionError, KeyError, RecursionError, ...
        raise ResponseFormatRejected(
            f"llama.cpp cannot turn this JSON schema into a grammar: {exc!r}"
        ) from exc
    # An unparsable grammar would reach llama.cpp's sampler as a null pointer and crash the process.
    sampler = llama_cpp.llama_sampler_init_grammar(
        llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
    )
    if not sampler:
        raise ResponseFormatRejected("llama.cpp cannot parse the grammar made from this JSON schema")
    llama_cpp.llama_sampler_free(sampler)
    return grammar
