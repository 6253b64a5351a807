"""Shared fixtures: tiny random-weight chat models built in process (seconds, no download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from refusal_lens.models import ChatFormatter, LoadedModel

REPO = Path(__file__).resolve().parents[1]

CHATML = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "I'm sorry, but I can't help with that.",
    "As an AI language model I cannot do this.",
    "Sure, here is how to bake bread: mix flour, water and salt.",
    "Write a poem about the sea. Explain how to hack a computer.",
    "The quick brown fox jumps over the lazy dog.",
] * 20


def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    fast.padding_side = "left"
    return fast


def make_model(kind: str = "qwen2", seed: int = 0) -> LoadedModel:
    tokenizer = make_tokenizer()
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif kind == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(**common, head_dim=16))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, f"tiny-{kind}", f"random-{kind}-{seed}", "config")


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return make_model("qwen2")


REFUSAL = "I'm sorry, but I can't help with that."
COMPLIANCE = "Sure, here is how to bake bread: mix flour, water and salt."


def make_refuser(steps: int = 80) -> LoadedModel:
    """A tiny Qwen2 trained for a few seconds to refuse the built-in harmful requests and
    answer the harmless ones (train and val splits): it refuses most held-out harmful test
    prompts and few harmless ones, so refusal metrics, searches and selections have something
    to measure."""
    from refusal_lens.data import builtin_prompts
    from refusal_lens.teacher_forcing import teacher_forced_batch

    lm = make_model("qwen2", seed=0)
    formatter = ChatFormatter(lm.tokenizer, max_length=256)
    pairs = [
        (p.text, REFUSAL if kind == "harmful" else COMPLIANCE)
        for kind in ("harmful", "harmless")
        for split in ("train", "val")
        for p in builtin_prompts(kind, split)  # type: ignore[arg-type]
    ]
    ids, mask, predicts = teacher_forced_batch(
        lm, formatter, [a for a, _ in pairs], [b for _, b in pairs]
    )
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    model = lm.model.train().requires_grad_(True)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scored = predicts[:, :-1]
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][scored], ids[:, 1:][scored])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().requires_grad_(False)
    return LoadedModel(model, lm.tokenizer, "tiny-refuser", "refuser-qwen2-0", "config")


@pytest.fixture(scope="session")
def refuser() -> LoadedModel:
    return make_refuser()


@pytest.fixture(scope="session")
def tiny_llama() -> LoadedModel:
    return make_model("llama")


@pytest.fixture(scope="session")
def tiny_gemma2() -> LoadedModel:
    return make_model("gemma2")


@pytest.fixture()
def formatter(tiny: LoadedModel) -> ChatFormatter:
    return ChatFormatter(tiny.tokenizer, max_length=256)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("REFUSAL_LENS_DATA", REPO.parent / "shared" / "datasets"))
    if not path.is_dir():
        pytest.skip(f"shared datasets not found at {path} (set REFUSAL_LENS_DATA)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Unit tests never touch the user's model cache; integration tests share the real one."""
    if "integration" not in request.keywords:
        monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture()
def mixture_jsonl(tmp_path: Path) -> Path:
    """A small user mixture file: conversations, requests and prose rows."""
    path = tmp_path / "mix.jsonl"
    rows: list[dict] = []
    for i in range(60):
        chat = [
            {"role": "user", "content": f"Tell me about bread {i}."},
            {"role": "assistant", "content": "Bread is flour and water."},
        ]
        rows.append({"messages": chat})
        rows.append({"prompt": f"Explain how to hack a computer {i}."})
        rows.append({"text": f"The quick brown fox jumps over the lazy dog {i} times."})
    path.write_text("\n".join(json.dumps(row) for row in rows))
    return path


def random_sae_set(lm: LoadedModel, arch: str = "topk", d_sae: int = 256, seed: int = 0):
    """An SAE at every layer of `lm` with random weights (decoder rows unit norm)."""
    from refusal_lens.hooks import HookPoint
    from refusal_lens.saes import SAEConfig, SAESet, build_sae

    torch.manual_seed(seed)
    saes = {}
    for layer in range(lm.n_layers):
        k = 8 if arch in ("topk", "batchtopk") else None
        sae = build_sae(SAEConfig(arch, lm.d_model, d_sae, k=k))
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn_like(sae.W_enc) / lm.d_model**0.5)
            sae.W_dec.copy_(torch.randn_like(sae.W_dec))
            sae.normalize_decoder()
            if hasattr(sae, "threshold"):
                sae.threshold.fill_(0.05)
        saes[HookPoint(layer, "resid_post")] = sae
    return SAESet({"name": lm.name, "weights_sha256": lm.weights_sha256}, saes, {})


@pytest.fixture(scope="session")
def tiny_saes(tiny: LoadedModel):
    return random_sae_set(tiny)


def refusal_direction(lm: LoadedModel, layer: int = 1):
    """The difference in means (last prompt position, after block `layer`) of the built-in
    harmful and harmless train prompts, recording its pools as a found direction does."""
    from refusal_lens import heldout
    from refusal_lens.data import builtin_prompts
    from refusal_lens.direction import Direction
    from refusal_lens.hooks import HookPoint, record

    formatter = ChatFormatter(lm.tokenizer, max_length=256)
    point = HookPoint(layer, "resid_post")
    means = []
    for kind in ("harmful", "harmless"):
        batch = formatter.encode(builtin_prompts(kind, "train").texts())  # type: ignore[arg-type]
        with torch.no_grad(), record(lm.model, [point]) as acts:
            lm.model(**batch.forward_kwargs())
        means.append(acts[point][0][:, -1].float().mean(dim=0))
    selected = {
        f"{kind}_{split}": heldout.describe(builtin_prompts(kind, split))  # type: ignore[arg-type]
        for kind in ("harmful", "harmless")
        for split in ("train", "val")
    }
    return Direction(means[0] - means[1], layer, -1, lm.identity(), {"selected_on": selected})
