"""The runner process: one loaded model, many sequences decoded together in one llama_batch per step.

It runs in its own process (like Ollama's runner) so a crash in native code kills only this model; unloading is
ending the process. The loop, each step:
  1. take commands from the pipe (new requests, cancels), without blocking while work is active;
  2. give waiting requests a free slot, preferring the slot whose cached tokens share the longest prefix;
  3. build one batch: for every decoding sequence its last token (and any a grammar forced after it) and the
     tokens speculation proposes after those (engine/speculative.py), then prompt chunks of prefilling sequences,
     so a long prompt is prefilled over several steps while the other streams keep decoding;
  4. llama_decode, then sample each sequence that produced logits with its own sampler chain (and grammar), going
     on through its proposals while they agree, and drop the rest from the KV cache;
  5. evaluate at most one image chunk of a prefilling sequence (engine/vision.py), on its own;
  6. send all events of the step in one message.
"""

from __future__ import annotations

import codecs
import ctypes
import os
import random
import select
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np

from herd.engine.devices import LoadLog, is_host_buffer, vram_mib
from herd.engine.embedding import EMBED_MAX_SEQS, Embedder, put_token
from herd.engine.ggml import gpu_offload_in_build
from herd.engine.protocol import (
    CancelCmd,
    DoneEvent,
    EmbedCmd,
    EmbedEvent,
    GenerateCmd,
    LoadSpec,
    Ready,
    ShutdownCmd,
    StatusCmd,
    StatusEvent,
    TokenLogprob,
    TopLogprob,
    frame,
)
from herd.engine.speculative import MAX_PROPOSED, Acceptance, CostCurve, PromptLookup, plan, verify
from herd.engine.vision import ImageChunk, PreparedImage, Vision, cache_keys
from herd.parsing.stop import StopMatcher

# While others decode, a prefilling sequence adds at most this many prompt tokens per step, so each step (and so
# every other stream's next token) stays short. Alone, it uses the whole num_batch.
INTERLEAVED_PREFILL_CHUNK = 64
UNBOUNDED_PREDICT_CONTEXTS = 4
# Tokens a grammar may force into one step (fast-forward); the rest come a step later
FAST_FORWARD_MAX = 32
# Step sizes timed at load for speculation's cost curve, and the time that may take (a big model on a CPU stops early
# and extrapolates)
COST_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
COST_BUDGET_S = 1.0

# LoadSpec's names -> llama.cpp's (llama_context_params.type_k/type_v, flash_attn_type)
GGML_CACHE_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "q4_0": "GGML_TYPE_Q4_0"}
FLASH_ATTN_TYPES = {"auto": "LLAMA_FLASH_ATTN_TYPE_AUTO", "on": "LLAMA_FLASH_ATTN_TYPE_ENABLED",
                    "off": "LLAMA_FLASH_ATTN_TYPE_DISABLED"}
@dataclass
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # exactly what this sequence's KV cache holds
    last_used: float = 0.0
    busy: bool = False


@dataclass
class Sequence:
    cmd: GenerateCmd
    slot: Slot
    sampler: object
    stop: StopMatcher
    decoder: codecs.IncrementalDecoder
    pending: list[int | ImageChunk]  # prompt tokens (and image chunks) not yet in the KV cache
    cached: int
    constraint: object | None = None
    generated: list[int] = field(default_factory=list)
    # Emitted, not yet decoded: the token sampled last, then any a grammar forced after it (fast-forward)
    next_tokens: list[int] = field(default_factory=list)
    draft: list[int] = field(default_factory=list)  # proposed tokens in this step's batch, after next_tokens
    draft_max: int = 0  # most tokens to propose per step (draft_num_predict; 0 = no speculation)
    lookup: PromptLookup | None = None
    acceptance: Acceptance = field(default_factory=Acceptance)
    batch_index: int = -1  # the batch entry whose logits sample the next token (proposals' follow it)
    t_start: int = 0
    t_first: int = 0
    max_tokens: int = -1
    greedy: bool = False  # the chain is greedy alone: the token is the argmax of the logits
    shifted: bool = False  # a context shift happened: KV after num_keep was computed over dropped tokens
    prompt_tokens: int = 0  # text tokens plus image tokens, as Ollama counts prompt_eval_count
    images: list[PreparedImage] = field(default_factory=list)  # mtmd chunks, freed when the sequence ends


class Worker:
    def __init__(self, conn: Connection, spec: LoadSpec) -> None:
        import llama_cpp as L

        self.L = L
        self.conn = conn
        self.spec = spec
        self.load_log = LoadLog()
        self._log_cb = L.llama_log_callback(self.load_log)  # kept: ctypes must not free it
        L.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        # Offload (Ollama's num_gpu): -1 = every layer, which llama.cpp places on the GPUs it has; a build without
        # GPU offload keeps them all on the CPU whatever the value. main_gpu >= 0: the whole model on that GPU
        # (llama.cpp's split mode "none"); else the layers are split over every GPU (its default, "layer").
        mp.n_gpu_layers = spec.n_gpu_layers
        if spec.main_gpu >= 0:
            mp.split_mode = L.LLAMA_SPLIT_MODE_NONE
            mp.main_gpu = spec.main_gpu
        mp.load_mode = L.LLAMA_LOAD_MODE_MMAP if spec.use_mmap else L.LLAMA_LOAD_MODE_NONE
        # Layers on llama.cpp RPC workers (HERD_RPC_SERVERS, engine/rpc.py): each worker probed, then registered,
        # and the offload devices set to exactly those workers, then this machine's GPUs, split by layer.
        from herd.engine.rpc import Offload, split_array

        self.rpc = Offload(spec.rpc_servers, conn.fileno()) if spec.rpc_servers else None
        if self.rpc is not None:
            self.rpc.apply(mp, spec.tensor_split)
        elif spec.tensor_split:  # over this machine's GPUs only; the array must outlive the load
            self._tensor_split = split_array(L, spec.tensor_split)
            mp.tensor_split = self._tensor_split
        self.model = L.llama_model_load_from_file(spec.model_path.encode(), mp)
        if not self.model:
            raise RuntimeError(f"unable to load model: {spec.model_path}{self.load_log.why()}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.eog = frozenset(t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t))
        cp = L.llama_context_default_params()
        n_par = 1 if spec.embedding else spec.num_parallel
        cp.n_ctx = spec.num_ctx * n_par
        cp.n_batch = max(spec.num_batch, n_par)
        cp.n_ubatch = max(spec.num_batch, n_par)
        cp.n_seq_max = n_par
        cp.n_threads = spec.num_thread
        cp.n_threads_batch = spec.num_thread
        # One KV stream per slot, not a unified pool: attention then reads only the sequence's own cells, laid
        # out the same way whatever else runs, so a seeded request gives the same text alone or among 7 others.
        # (With a unified pool, KV placement changes the float summation order: 0 of 8 texts matched.)
        cp.kv_unified = False
        cp.no_perf = True
        # OLLAMA_KV_CACHE_TYPE / kv_cache_type for K and V alike, and OLLAMA_FLASH_ATTENTION. The server refuses a
        # quantized cache with flash attention off before it starts a runner (options.cache_settings); if one got
        # here anyway, llama.cpp refuses the context and the error below names it.
        cp.type_k = cp.type_v = getattr(L, GGML_CACHE_TYPES[spec.kv_cache_type])
        cp.flash_attn_type = getattr(L, FLASH_ATTN_TYPES[spec.flash_attention])
        if spec.embedding:
            cp.embeddings = True
            # An embedding runner packs several short inputs into one decode, one sequence each (engine/embedding.py),
            # and they share one pool of num_ctx cells. Packing changes float summation order a little, so a
            # text's vector may differ in the last bits with its batch; chat runners keep their own streams.
            cp.n_seq_max = EMBED_MAX_SEQS
            cp.kv_unified = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError(f"unable to create llama context{self.load_log.why()}")
        self.load_log.active = False
        self.mem = L.llama_get_memory(self.ctx)
        self.can_shift = bool(L.llama_memory_can_shift(self.mem))
        self.n_batch = cp.n_batch
        self.batch = L.llama_batch_init(self.n_batch, 0, 1)
        self.embedder = Embedder(L, self.model, self.ctx, self.batch, self.n_batch, spec.num_ctx) if spec.embedding \
            else None
        self.vision = Vision(L, self.model, self.ctx, spec.projector_path, spec.num_thread, self.n_batch) \
            if spec.projector_path and not spec.embedding else None
        self.slots = [Slot(i) for i in range(n_par)]
        self.waiting: deque[GenerateCmd] = deque()
        self.active: dict[int, Sequence] = {}
        self.events: list[object] = []
        self._piece_buf = ctypes.create_string_buffer(256)
        self._piece_cache: dict[int, bytes] = {}
        self.running = True
        self._grammar_tokenizer: object | None = None
        self.prompt_evaluated = 0
        self.prompt_cached = 0
        self.step_started = 0.0  # time.monotonic() when the step now running began; 0.0 between steps
        self.speculative = spec.speculative and not spec.embedding
        self.fast_forward = self.speculative and spec.fast_forward
        self.spec_steps = self.spec_proposed = self.spec_accepted = self.ff_tokens = 0
        self.draft_model = None
        if self.speculative and spec.draft_path:
            from herd.engine.draft import DraftModel

            self.draft_model = DraftModel(L, spec.draft_path, n_par, spec.num_ctx, spec.num_thread, self.n_batch,
                                          prefill_budget=self.n_batch, n_gpu_layers=spec.n_gpu_layers,
                                          main_gpu=spec.main_gpu)
            why = self.draft_model.vocab_mismatch(self.vocab)
            if why:
                raise RuntimeError(f"draft model {spec.draft_path}: {why}: a draft must have the model's vocabulary")
        self.cost = CostCurve.measure(self.time_step, COST_SIZES, COST_BUDGET_S) if self.speculative else CostCurve()

    def placement(self) -> tuple[str, int]:
        """Where the model went, as one log line (layers per device, weight and KV buffers, the cache type and the
        flash attention llama.cpp resolved), and the bytes it holds in this machine's accelerator memory."""
        L, spec = self.L, self.spec
        layers, weights, kv, flash = self.load_log.placement()
        # Summed apart: weight and KV buffers share device names (CUDA0, RPC0[...]).
        device_mib = sum(v for buffers in (weights, kv) for k, v in buffers.items() if not is_host_buffer(k))
        device_bytes = int(device_mib * 1024 * 1024)

        def mib(buffers: dict[str, float]) -> str:
            return ", ".join(f"{name} {size:.1f} MiB" for name, size in buffers.items()) or "?"

        n_layer = L.llama_model_n_layer(self.model)
        per_device = ", ".join(f"{dev} {n}" for dev, n in layers.items()) or "?"
        offload = "GPU offload in this build" if gpu_offload_in_build() else "no GPU offload in this build"
        gpu = f"num_gpu {spec.n_gpu_layers}" + (f", main_gpu {spec.main_gpu}" if spec.main_gpu >= 0 else "")
        line = (f"herd runner {os.getpid()}: {os.path.basename(spec.model_path)}: layers {per_device} "
                f"({n_layer} + output; {gpu}; {offload}); weights {mib(weights)}; KV cache {spec.kv_cache_type} "
                f"{mib(kv)}; flash attention {flash or spec.flash_attention}; in device memory "
                f"{device_bytes / 2**20:.1f} MiB")
        return line, int(vram_mib(weights, kv) * 1024 * 1024)

    # ---- helpers -----------------------------------------------------------------------------------------
    def piece(self, token: int) -> bytes:
        cached = self._piece_cache.get(token)
        if cached is None:
            n = self.L.llama_token_to_piece(self.vocab, token, self._piece_buf, 256, 0, True)
            cached = self._piece_buf.raw[: max(n, 0)]
            self._piece_cache[token] = cached
        return cached

    def penalty_window(self, cmd: GenerateCmd) -> int:
        """How many recent tokens the penalties look at; 0 when no penalty is on."""
        s = cmd.sampling
        last_n = self.spec.num_ctx if s.repeat_last_n < 0 else s.repeat_last_n
        return last_n if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty else 0

    def greedy_only(self, cmd: GenerateCmd) -> bool:
        """Whether make_sampler's chain is the greedy sampler and nothing else."""
        return cmd.sampling.temperature <= 0 and not self.penalty_window(cmd)

    def make_sampler(self, cmd: GenerateCmd) -> object:
        L = self.L
        s = cmd.sampling
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        last_n = self.penalty_window(cmd)
        if last_n:
            L.llama_sampler_chain_add(
                chain,
                L.llama_sampler_init_penalties(self.n_vocab, last_n, s.repeat_penalty, s.frequency_penalty,
                                               s.presence_penalty),
            )
        if s.temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
        if 0 < s.typical_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_typical(s.typical_p, 1))
        if 0 < s.top_p < 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(s.min_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed >= 0 else random.getrandbits(32)
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def make_constraint(self, grammar: str) -> object:
        from herd.constrain.matcher import Constraint, TokenizerCache

        if self._grammar_tokenizer is None:
            self._grammar_tokenizer = TokenizerCache().get(self.vocab)
        return Constraint(self._grammar_tokenizer, grammar)

    # ---- scheduling --------------------------------------------------------------------------------------
    def handle(self, msg: object) -> None:
        if isinstance(msg, GenerateCmd):
            self.waiting.append(msg)
        elif isinstance(msg, CancelCmd):
            self.cancel(msg.req_id)
        elif isinstance(msg, EmbedCmd):
            self.embed(msg)
        elif isinstance(msg, StatusCmd):
            self.events.append(
                StatusEvent(len(self.active), sum(not s.busy for s in self.slots),
                            tuple(len(s.tokens) for s in self.slots), self.prompt_evaluated, self.prompt_cached,
                            self.spec_steps, self.spec_proposed, self.spec_accepted, self.ff_tokens)
            )
        elif isinstance(msg, ShutdownCmd):
            self.running = False

    def cancel(self, req_id: int) -> None:
        for i, cmd in enumerate(self.waiting):
            if cmd.req_id == req_id:
                del self.waiting[i]
                self.events.append(DoneEvent(req_id, "cancel"))
                return
        seq = self.active.get(req_id)
        if seq is not None:
            self.finish(seq, "cancel")

    def prompt_items(self, cmd: GenerateCmd) -> tuple[list[int | ImageChunk], list[PreparedImage]]:
        if not cmd.images:
            return list(cmd.tokens), []
        if self.vision is None:
            raise ValueError("this model has no vision projector loaded: it cannot take images")
        return self.vision.prompt_items(cmd.tokens, cmd.images)

    def assign_slots(self) -> None:
        while self.waiting:
            free = [s for s in self.slots if not s.busy]
            if not free:
                return
            cmd = self.waiting.popleft()
            try:
                items, prepared = self.prompt_items(cmd)
            except Exception as exc:
                self.events.append(DoneEvent(cmd.req_id, "error", error=str(exc)))
                continue
            tokens = cache_keys(items)
            what = ""
            if not tokens or len(tokens) >= self.spec.num_ctx:
                # The server refuses these before sending them; a runner never decodes a batch it cannot hold.
                what = "prompt is empty" if not tokens else f"prompt of {len(tokens)} tokens does not fit num_ctx"
            elif isinstance(items[-1], ImageChunk):
                what = "a prompt must not end with an image: the answer needs a text token after it"
            if what:
                for p in prepared:
                    self.vision.free(p)  # type: ignore[union-attr]
                kind = "too_long" if tokens and len(tokens) >= self.spec.num_ctx else ""
                self.events.append(DoneEvent(cmd.req_id, "error", error=what, error_kind=kind))
                continue

            def common(slot: Slot, tokens: list[int] = tokens) -> int:
                n = 0
                for a, b in zip(slot.tokens, tokens):
                    if a != b:
                        break
                    n += 1
                return n

            if self.spec.prompt_cache:
                slot = max(free, key=lambda s: (common(s), -s.last_used))
                keep = common(slot)
            else:
                slot = min(free, key=lambda s: s.last_used)
                keep = 0
            keep = min(keep, len(tokens) - 1)  # the last prompt token is always evaluated: it yields the logits
            # Reuse whole items only: a prefix that ends inside an image keeps none of it.
            pending: list[int | ImageChunk] = []
            pos = 0
            for i, item in enumerate(items):
                width = item.n_pos if isinstance(item, ImageChunk) else 1
                if pos + width > keep:
                    keep = pos
                    pending = items[i:]
                    break
                pos += width
            self.L.llama_memory_seq_rm(self.mem, slot.seq_id, keep, -1)
            del slot.tokens[keep:]
            slot.busy = True
            try:
                sampler = self.make_sampler(cmd)
                window = self.penalty_window(cmd)
                if window:
                    # As llama.cpp's server does, the prompt's last tokens count for the penalties too: "say cat ten
                    # times" penalises the "cat" the user wrote, not only the ones the model writes.
                    for tok in cmd.tokens[-window:]:
                        self.L.llama_sampler_accept(sampler, tok)
                constraint = self.make_constraint(cmd.grammar) if cmd.grammar else None
            except Exception as exc:  # a grammar llguidance refuses must fail this request only
                slot.busy = False
                for p in prepared:
                    self.vision.free(p)  # type: ignore[union-attr]
                self.events.append(DoneEvent(cmd.req_id, "error", error=str(exc)))
                continue
            max_tokens = cmd.sampling.num_predict
            if max_tokens < 0:
                # "Until stop" with context shift could run forever; like Ollama, bound it by a few contexts.
                max_tokens = UNBOUNDED_PREDICT_CONTEXTS * self.spec.num_ctx
            draft_max = 0
            if self.speculative and not (prepared and self.draft_model is not None):  # a draft reads no images
                want = cmd.sampling.draft_num_predict
                draft_max = MAX_PROPOSED if want < 0 else min(want, MAX_PROPOSED)
            seq = Sequence(
                cmd=cmd,
                slot=slot,
                sampler=sampler,
                stop=StopMatcher(cmd.sampling.stop),
                decoder=codecs.getincrementaldecoder("utf-8")("replace"),
                pending=pending,
                cached=keep,
                constraint=constraint,
                t_start=time.perf_counter_ns(),
                max_tokens=max_tokens,
                greedy=self.greedy_only(cmd),
                draft_max=draft_max,
                lookup=PromptLookup(cmd.tokens) if draft_max else None,
                prompt_tokens=sum(i.n_tokens if isinstance(i, ImageChunk) else 1 for i in items),
                images=prepared,
            )
            self.active[cmd.req_id] = seq
            self.prompt_cached += keep
            self.prompt_evaluated += len(tokens) - keep

    # ---- one step ----------------------------------------------------------------------------------------
    def step(self) -> None:
        L = self.L
        batch = self.batch
        n = 0
        # In slot order: over per-sequence KV streams llama.cpp makes one ubatch (one pass over the weights) per run
        # of sequence ids that go up one by one; in arrival order 8 streams decoded 0.6x as fast.
        active = sorted(self.active.values(), key=_by_seq_id)
        decoding = [s for s in active if s.next_tokens]
        prefilling = [s for s in active if not s.next_tokens and s.pending]
        if self.speculative and decoding:
            self.propose(decoding, prefilling)
        for seq in decoding:
            # The emitted tokens, logits on the last; then the proposals, each with logits to verify it
            pos, sid = len(seq.slot.tokens), seq.slot.seq_id
            last = len(seq.next_tokens) - 1
            for j, token in enumerate(seq.next_tokens + seq.draft):
                put_token(batch, n + j, token, pos + j, sid, j >= last)
            seq.slot.tokens.extend(seq.next_tokens)
            seq.slot.tokens.extend(seq.draft)
            seq.batch_index = n + last
            n += len(seq.next_tokens) + len(seq.draft)
            seq.next_tokens = []
        budget = self.n_batch - n
        chunk_cap = INTERLEAVED_PREFILL_CHUNK if decoding else budget
        image_seq: Sequence | None = None
        for seq in prefilling:
            seq.batch_index = -1
            if isinstance(seq.pending[0], ImageChunk):
                if image_seq is None:
                    image_seq = seq
                continue
            if budget <= 0:
                continue
            run = 0  # text tokens up to the next image
            limit = min(len(seq.pending), budget, max(chunk_cap, 1))
            while run < limit and not isinstance(seq.pending[run], ImageChunk):
                run += 1
            pos = len(seq.slot.tokens)
            chunk = seq.pending[:run]
            for j, tok in enumerate(chunk):
                put_token(batch, n, tok, pos + j, seq.slot.seq_id, False)  # type: ignore[arg-type]
                n += 1
            seq.slot.tokens.extend(chunk)  # type: ignore[arg-type]
            del seq.pending[:run]
            budget -= run
            if not seq.pending:
                batch.logits[n - 1] = 1
                seq.batch_index = n - 1
        if n:
            batch.n_tokens = n
            rc = L.llama_decode(self.ctx, batch)
            if rc != 0:
                self.decode_apart(decoding + prefilling, n, rc)
            else:
                now = time.perf_counter_ns()
                for seq in decoding + prefilling:
                    if seq.batch_index >= 0 and seq.cmd.req_id in self.active:
                        self.advance(seq, now)
        if image_seq is not None and image_seq.cmd.req_id in self.active:
            self.evaluate_image(image_seq)

    def propose(self, decoding: list[Sequence], prefilling: list[Sequence]) -> None:
        """Set each decoding sequence's proposals for this step (engine/speculative.py): as many as `plan` finds
        worth their cost, from prompt lookup or from the draft model."""
        wants: list[tuple[float, int]] = []
        found: list[list[int]] = []
        n_base = 0
        for seq in decoding:
            n_base += len(seq.next_tokens)
            room_ctx = self.spec.num_ctx - len(seq.slot.tokens) - len(seq.next_tokens) - 1
            room_out = seq.max_tokens - len(seq.generated) - 1  # the step's last sampled token counts too
            most = max(0, min(seq.draft_max, room_ctx, room_out))
            proposal: list[int] = []
            if most and seq.lookup is not None:
                if self.draft_model is None:
                    proposal = seq.lookup.propose(most)
                    most = len(proposal)
            else:
                most = 0
            wants.append((seq.acceptance.rate, most))
            found.append(proposal)
        n_base += min(sum(len(s.pending) for s in prefilling), INTERLEAVED_PREFILL_CHUNK)
        ks = plan(wants, n_base, float(len(decoding)), self.cost, self.n_batch - n_base,
                  apart=len(decoding) > 1 or bool(prefilling))
        if self.draft_model is not None:
            asks = [(seq.slot.seq_id, seq.slot.tokens + seq.next_tokens, k)
                    for seq, k in zip(decoding, ks) if k > 0]
            drafted = self.draft_model.propose(asks) if asks else {}  # type: ignore[attr-defined]
            found = [list(drafted.get(seq.slot.seq_id, ())) for seq in decoding]
        for seq, k, proposal in zip(decoding, ks, found):
            seq.draft = proposal[:k]

    def time_step(self, n: int) -> float:
        """Seconds of one decode of n tokens of one sequence, logits on each (what verifying n - 1 proposals
        costs), in slot 0 before any request has it. For the cost curve at load."""
        L, batch = self.L, self.batch
        n = min(n, self.n_batch, self.spec.num_ctx - 1)
        tok = max(L.llama_vocab_bos(self.vocab), 0)
        for j in range(n):
            put_token(batch, j, tok, j, 0, True)
        batch.n_tokens = n
        t0 = time.perf_counter()
        L.llama_decode(self.ctx, batch)
        L.llama_synchronize(self.ctx)  # RPC and GPU devices return before the work is done
        took = time.perf_counter() - t0
        L.llama_memory_seq_rm(self.mem, 0, 0, -1)
        return took

    def evaluate_image(self, seq: Sequence) -> None:
        """The sequence's next prompt item is an image chunk: encode it and decode it into the sequence's KV, on
        its own (embeddings cannot share a batch with tokens). One per step: the other streams wait one image."""
        chunk = seq.pending[0]
        assert isinstance(chunk, ImageChunk) and self.vision is not None
        pos = len(seq.slot.tokens)
        try:
            self.vision.evaluate(chunk, pos, seq.slot.seq_id)
        except Exception as exc:
            seq.slot.tokens.clear()  # what the failed decode left in the KV is unknown: drop it all
            self.L.llama_memory_seq_rm(self.mem, seq.slot.seq_id, 0, -1)
            self.finish(seq, "error", error=str(exc))
            return
        seq.slot.tokens.extend([chunk.key] * chunk.n_pos)
        del seq.pending[0]

    def decode_apart(self, seqs: list[Sequence], n: int, rc: int) -> None:
        """A batch failed to decode (llama.cpp then restores the KV cache as it was). Decode each sequence's part
        on its own, so a failure one sequence causes (its KV cells ran out, say) ends that sequence with an
        error while the others go on. Only on this rare path are the batch's entries copied out."""
        L, batch = self.L, self.batch
        entries = [(batch.token[i], batch.pos[i], batch.seq_id[i][0], batch.logits[i]) for i in range(n)]
        for seq in seqs:
            mine = [e for e in entries if e[2] == seq.slot.seq_id]
            if not mine:
                continue
            out = -1  # the first entry with logits: the one advance samples first
            for i, (tok, pos, sid, logits) in enumerate(mine):
                put_token(batch, i, tok, pos, sid, bool(logits))
                if logits and out < 0:
                    out = i
            batch.n_tokens = len(mine)
            rc_one = L.llama_decode(self.ctx, batch) if len(seqs) > 1 else rc
            if rc_one != 0:
                # The slot's tokens must stay what its KV holds: drop the whole sequence's cells and tokens.
                seq.slot.tokens.clear()
                L.llama_memory_seq_rm(self.mem, seq.slot.seq_id, 0, -1)
                bad = next((e[0] for e in mine if not 0 <= e[0] < self.n_vocab), None)
                why = f"token {bad} is not in the model's vocabulary" if bad is not None else \
                    f"llama_decode failed ({rc_one})"
                self.finish(seq, "error", error=why)
                continue
            if seq.batch_index >= 0 and seq.cmd.req_id in self.active:
                seq.batch_index = out
                self.advance(seq, time.perf_counter_ns())

    def advance(self, seq: Sequence, now: int) -> None:
        """After a decode: sample the sequence's next token, and while it equals the proposal at that position,
        the one after (engine/speculative.py says why that is exact). The proposals not reached leave the KV
        cache. Then the grammar may force more tokens (fast-forward) into the next step."""
        draft, seq.draft = seq.draft, []
        if not seq.t_first:
            seq.t_first = now
        end: tuple[str, bool] | None = None

        def sample(i: int) -> int | None:
            nonlocal end
            token, logprobs = self.sample_token(seq, seq.batch_index + i)
            end = self.emit(seq, token, logprobs)
            return token if end is None else None

        accepted, token = verify(draft, sample)
        rejected = len(draft) - accepted
        if rejected:
            tokens = seq.slot.tokens
            self.L.llama_memory_seq_rm(self.mem, seq.slot.seq_id, len(tokens) - rejected, -1)
            del tokens[len(tokens) - rejected :]
        if draft:
            self.spec_steps += 1
            self.spec_proposed += len(draft)
            self.spec_accepted += accepted
        seq.acceptance.update(len(draft), accepted)
        if token is not None:
            seq.next_tokens = [token]
            if self.fast_forward and seq.constraint is not None and not seq.cmd.logprobs:
                end = self.force(seq)
        if end is not None:
            self.finish(seq, end[0], drop_last=end[1])
            return
        if len(seq.slot.tokens) + len(seq.next_tokens) >= self.spec.num_ctx and not self.shift_context(seq):
            self.finish(seq, "length")

    def force(self, seq: Sequence) -> tuple[str, bool] | None:
        """Grammar fast-forward: the tokens the constraint admits as the only continuation (llguidance computes
        them) are emitted without sampling and decoded together in the next step. Not with logprobs, which need
        the model's logits before each token."""
        forced = seq.constraint.forced_tokens()  # type: ignore[attr-defined]
        room = min(FAST_FORWARD_MAX, seq.max_tokens - len(seq.generated),
                   self.spec.num_ctx - len(seq.slot.tokens) - len(seq.next_tokens) - 1)
        window = self.penalty_window(seq.cmd)
        for tok in forced[: max(room, 0)]:
            seq.constraint.accept(tok)  # type: ignore[attr-defined]
            if window:
                self.L.llama_sampler_accept(seq.sampler, tok)  # the penalties count forced tokens too
            self.ff_tokens += 1
            end = self.emit(seq, tok, ())
            if end is not None:
                return end
            seq.next_tokens.append(tok)
        return None

    def sample_token(self, seq: Sequence, idx: int) -> tuple[int, tuple[TokenLogprob, ...]]:
        """The sequence's next token from the logits of batch entry idx, through its grammar and chain."""
        L = self.L
        logits = None
        bias = seq.cmd.sampling.logit_bias
        if seq.constraint is not None or seq.cmd.logprobs or seq.greedy or bias:
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, idx), shape=(self.n_vocab,))
        if bias:
            # In place: the sampler chain reads these same logits from the context.
            for tok, b in bias:
                logits[tok] += b  # type: ignore[index]
        raw_logprobs = None
        if seq.cmd.logprobs and logits is not None:
            shifted = logits.astype(np.float64) - float(logits.max())
            raw_logprobs = shifted - np.log(np.exp(shifted).sum())
        if seq.constraint is not None:
            seq.constraint.apply(logits)  # type: ignore[attr-defined]
        if seq.greedy:
            # The token llama.cpp's greedy sampler picks (the first maximum), without its copy of every logit into
            # a candidate array first: about 5 us a token instead of 34, in the runner's serial path.
            token = int(logits.argmax())  # type: ignore[union-attr]
        else:
            token = L.llama_sampler_sample(seq.sampler, self.ctx, idx)
        if seq.constraint is not None:
            seq.constraint.accept(token)  # type: ignore[attr-defined]
        if raw_logprobs is not None and token not in self.eog:
            return token, (self.logprob_entry(token, raw_logprobs, seq.cmd.top_logprobs),)
        return token, ()

    def emit(self, seq: Sequence, token: int, logprobs: tuple[TokenLogprob, ...]) -> tuple[str, bool] | None:
        """Add a generated token to the sequence and its text to the step's events. Returns how the sequence
        ends, (reason, drop the token from the reported ones), when this token ends it, else None."""
        seq.generated.append(token)
        if token in self.eog:
            return "stop", True
        if seq.lookup is not None:
            seq.lookup.extend((token,))
        text = seq.decoder.decode(self.piece(token))
        out = seq.stop.feed(text) if text else ""
        if out or logprobs:
            self.events.append((seq.cmd.req_id, out, logprobs))  # a TextEvent, as a plain tuple
        if seq.stop.stopped:
            return "stop", False
        if seq.constraint is not None and (seq.constraint.is_finished() or seq.constraint.is_error()):  # type: ignore[attr-defined]
            return "stop", False
        if 0 <= seq.max_tokens <= len(seq.generated):
            return "length", False
        return None

    def shift_context(self, seq: Sequence) -> bool:
        """Ollama's context shift (spec 2.7): keep the first num_keep tokens, drop half of the rest from the KV
        cache and move the remainder down, so the generation goes on. False when it must stop instead."""
        s = seq.cmd.sampling
        tokens = seq.slot.tokens
        keep = min(max(s.num_keep, 0), len(tokens) // 2)
        discard = (len(tokens) - keep) // 2
        if not s.shift or not self.can_shift or discard <= 0:
            return False
        L = self.L
        sid = seq.slot.seq_id
        L.llama_memory_seq_rm(self.mem, sid, keep, keep + discard)
        L.llama_memory_seq_add(self.mem, sid, keep + discard, -1, -discard)
        del tokens[keep : keep + discard]
        seq.shifted = True
        return True

    def logprob_entry(self, token: int, logprobs: np.ndarray, top: int) -> TokenLogprob:
        def item(tok: int) -> TopLogprob:
            raw = self.piece(tok)
            return TopLogprob(raw.decode("utf-8", "replace"), float(logprobs[tok]), tuple(raw))

        main = item(token)
        tops: tuple[TopLogprob, ...] = ()
        if top > 0:
            k = min(top, logprobs.shape[0])
            best = np.argpartition(-logprobs, k - 1)[:k]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            tops = tuple(item(int(t)) for t in best)
        return TokenLogprob(main.token, main.logprob, main.bytes, tops)

    def finish(self, seq: Sequence, reason: str, error: str = "", drop_last: bool = False) -> None:
        self.active.pop(seq.cmd.req_id, None)
        # Bytes of a character the generation stopped inside of (num_predict, a stop, the end) stay in the
        # decoder and are dropped, as Ollama drops them: the client never gets a U+FFFD the model did not write.
        tail = seq.stop.finish() if reason != "cancel" else ""
        if tail and reason not in ("cancel", "error"):
            self.events.append((seq.cmd.req_id, tail, ()))  # a TextEvent, as a plain tuple
        now = time.perf_counter_ns()
        t_first = seq.t_first or now
        self.events.append(
            DoneEvent(
                seq.cmd.req_id,
                reason,
                prompt_tokens=seq.prompt_tokens,
                cached_tokens=seq.cached,
                eval_count=len(seq.generated),
                prompt_eval_ns=t_first - seq.t_start,
                eval_ns=now - t_first,
                error=error,
                tokens=tuple(seq.generated[:-1] if drop_last else seq.generated),
                stop_sequence=seq.stop.matched,
            )
        )
        self.L.llama_sampler_free(seq.sampler)
        for p in seq.images:
            self.vision.free(p)  # type: ignore[union-attr]
        seq.images.clear()
        if seq.shifted:
            # The cells after num_keep were computed while the dropped tokens were in context: they are not what a
            # fresh prompt of the same tokens would give, so a later request may reuse only the kept start.
            keep = min(max(seq.cmd.sampling.num_keep, 0), len(seq.slot.tokens))
            self.L.llama_memory_seq_rm(self.mem, seq.slot.seq_id, keep, -1)
            del seq.slot.tokens[keep:]
        seq.slot.busy = False
        seq.slot.last_used = time.monotonic()

    # ---- embeddings --------------------------------------------------------------------------------------
    def embed(self, cmd: EmbedCmd) -> None:
        """One raw vector per input (see engine/embedding.py); a failure fails this request only."""
        total = sum(len(t) for t in cmd.inputs)
        if self.embedder is None:
            self.events.append(EmbedEvent(cmd.req_id, (), total, error="this runner was not loaded for embeddings"))
            return
        try:
            self.events.append(EmbedEvent(cmd.req_id, self.embedder.embed(cmd.inputs), total))
        except Exception as exc:
            self.events.append(EmbedEvent(cmd.req_id, (), total, error=str(exc)))

    # ---- main loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        conn = self.conn
        fd = conn.fileno()
        # A poll object registered once: Connection.poll() builds a selector per call, and this loop asks
        # once per decode step.
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        while self.running:
            idle = not self.active and not self.waiting
            if poller.poll(None if idle else 0):
                try:
                    self.handle(conn.recv())
                    while poller.poll(0):
                        self.handle(conn.recv())
                except EOFError:
                    return  # the server went away: nothing left to serve
            self.assign_slots()
            if self.active:
                # Read by a watchdog thread (engine/rpc.py): a step through a frozen RPC worker never returns.
                self.step_started = time.monotonic()
                self.step()
                self.step_started = 0.0
            if self.events:
                events, self.events = self.events, []
                _write_all(fd, frame(events))


def _by_seq_id(seq: Sequence) -> int:
    return seq.slot.seq_id


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def runner_main(conn: Connection, spec: LoadSpec, rpc_timeout: float = 60.0) -> None:
    """Entry point of the runner process. `rpc_timeout` is HERD_RPC_TIMEOUT, for the watchdog of a runner whose
    layers are on RPC workers."""
    from herd.engine import rpc

    try:
        worker = Worker(conn, spec)
        vram = 0
        try:
            line, vram = worker.placement()
            print(line, file=sys.stderr, flush=True)
        except Exception:  # a log line must never fail a load
            traceback.print_exc(file=sys.stderr)
        rss = 0
        try:
            with open(f"/proc/{os.getpid()}/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        layers = dict(worker.load_log.placement()[0])
        placement = worker.rpc.placement(layers) if worker.rpc is not None else \
            tuple((dev, "local", n) for dev, n in layers.items())
        conn.send(Ready(True, n_ctx_train=worker.L.llama_model_n_ctx_train(worker.model), memory_bytes=rss,
                        placement=placement, vram_bytes=vram))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        conn.send(Ready(False, error=str(exc), error_kind=rpc.error_kind(exc)))
        return
    if worker.rpc is not None:
        worker.rpc.watch(worker, rpc_timeout)
    worker.run()
