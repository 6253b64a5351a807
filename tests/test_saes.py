"""SAE architectures, SAELens-format IO, sets, activation collection, training, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refusal_lens.errors import UserError
from refusal_lens.hooks import HookPoint
from refusal_lens.models import LoadedModel
from refusal_lens.saes import (
    SAE_CLASSES,
    SAEConfig,
    SAESet,
    TokenMask,
    TrainConfig,
    build_sae,
    cache_from_tensors,
    collect_activations,
    load_gemma_scope_npz,
    load_sae,
    save_sae,
    train_saes,
)
from refusal_lens.saes.mixture import Document, MixtureSource, Tokenizer, TokenKind
from refusal_lens.saes.sparse_ops import decode_active, entry_values, sparse_reconstruction
from refusal_lens.saes.training import LayerTrainer


def random_sae(arch: str, d_in: int = 16, d_sae: int = 64, k: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    sae = build_sae(SAEConfig(arch, d_in, d_sae, k=k if arch in ("topk", "batchtopk") else None))
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn_like(param) * 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(d_sae) * 0.2)
    return sae


@pytest.mark.parametrize("arch", sorted(SAE_CLASSES))
def test_any_leading_dims_and_error_term(arch: str) -> None:
    sae = random_sae(arch)
    x = torch.randn(3, 5, 16)
    latents = sae.encode(x)
    assert latents.shape == (3, 5, 64)
    flat = sae.encode(x.reshape(15, 16)).reshape(3, 5, 64)
    torch.testing.assert_close(latents, flat)
    recon = sae(x)
    assert recon.shape == x.shape
    torch.testing.assert_close(sae.decode(latents), recon, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recon + sae.error(x), x)
    both = sae.encode_and_reconstruct(x)
    torch.testing.assert_close(both[0], latents)
    torch.testing.assert_close(both[1], recon, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_input_normalisation_is_undone_by_forward(norm: str) -> None:
    sae = random_sae("topk")
    sae.cfg.normalize_activations = norm
    x = torch.randn(4, 16) * 7 + 3
    latents, recon = sae.encode_and_reconstruct(x)
    torch.testing.assert_close(latents, sae.encode(x))
    torch.testing.assert_close(recon, sae(x), atol=1e-5, rtol=1e-5)
    # the decoder output alone is in normalised units, not the model's
    assert not torch.allclose(sae.decode(latents), recon, atol=1e-3)


def test_topk_selects_over_latents_not_positions() -> None:
    sae = random_sae("topk", k=4)
    x = torch.randn(2, 7, 16)
    latents = sae.encode(x)
    assert ((latents > 0).sum(-1) <= 4).all()
    # per-position selection: each position's latents equal encoding it alone
    for b in range(2):
        for p in range(7):
            torch.testing.assert_close(latents[b, p], sae.encode(x[b, p]))


def test_embedding_bag_decode_matches_dense() -> None:
    sae = random_sae("topk")
    x = torch.randn(10, 16)
    active = sae.active(x)
    dense = active.to_dense(64)
    torch.testing.assert_close(decode_active(active, sae.W_dec), dense @ sae.W_dec)


def test_sparse_backward_matches_dense_autograd() -> None:
    torch.manual_seed(0)
    n, d, m, k = 12, 8, 32, 3
    x = torch.randn(n, d)
    w_enc = torch.randn(d, m, requires_grad=True)
    b_enc = torch.randn(m, requires_grad=True)
    w_dec = torch.randn(m, d, requires_grad=True)
    b_dec = torch.randn(d, requires_grad=True)
    target = torch.randn(n, d)
    # dense reference
    pre = (x - b_dec) @ w_enc + b_enc
    idx = pre.detach().topk(k, dim=-1).indices.sort(dim=-1).values
    mask = torch.zeros_like(pre).scatter_(-1, idx, 1.0)
    recon = (torch.relu(pre) * mask) @ w_dec
    (recon - target).pow(2).sum().backward()
    reference = [t.grad.clone() for t in (w_enc, b_enc, w_dec, b_dec)]
    for t in (w_enc, b_enc, w_dec, b_dec):
        t.grad = None
    with torch.no_grad():
        pre_dense = (x - b_dec) @ w_enc + b_enc
    rows = torch.arange(n).repeat_interleave(k)
    cols = idx.reshape(-1)
    out = sparse_reconstruction(x, b_dec, w_enc, b_enc, w_dec, rows, cols, pre_dense[rows, cols])
    torch.testing.assert_close(out, recon.detach(), atol=1e-5, rtol=1e-5)
    (out - target).pow(2).sum().backward()
    for got, want in zip((w_enc, b_enc, w_dec, b_dec), reference, strict=True):
        torch.testing.assert_close(got.grad, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", sorted(SAE_CLASSES))
def test_save_load_round_trip(arch: str, tmp_path: Path) -> None:
    sae = random_sae(arch)
    sae.cfg.metadata["hook_name"] = "blocks.2.hook_resid_post"
    save_sae(sae, tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["d_in"] == 16 and cfg["d_sae"] == 64
    assert cfg["architecture"] == ("jumprelu" if arch == "batchtopk" else arch)
    loaded = load_sae(tmp_path / "sae")
    x = torch.randn(4, 16)
    torch.testing.assert_close(loaded(x), sae(x))
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))


def test_fold_input_scale_is_exact() -> None:
    sae = random_sae("topk")
    x = torch.randn(6, 16) * 5.0
    before = sae(x / 5.0) * 5.0
    latents = sae.encode(x / 5.0)
    sae.fold_input_scale(5.0)
    torch.testing.assert_close(sae(x), before, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae.encode(x), latents, atol=1e-4, rtol=1e-4)


def test_corrupt_or_truncated_weights_give_one_line_error(tmp_path: Path) -> None:
    save_sae(random_sae("topk"), tmp_path / "sae")
    weights = tmp_path / "sae" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt or truncated") as info:
        load_sae(tmp_path / "sae")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"cfg\.json is missing"):
        load_sae(tmp_path)


def test_wrong_shapes_are_reported(tmp_path: Path) -> None:
    save_sae(random_sae("topk"), tmp_path / "sae")
    cfg_file = tmp_path / "sae" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["d_sae"] = 65
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="has shape"):
        load_sae(tmp_path / "sae")


def test_pre_6_saelens_topk_config(tmp_path: Path) -> None:
    sae = random_sae("topk")
    save_sae(sae, tmp_path / "sae")
    cfg_file = tmp_path / "sae" / "cfg.json"
    old = {
        "d_in": 16,
        "d_sae": 64,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "hook_point": "blocks.1.hook_resid_post",
    }
    cfg_file.write_text(json.dumps(old))
    loaded = load_sae(tmp_path / "sae")
    assert loaded.cfg.architecture == "topk" and loaded.cfg.k == 4
    assert loaded.cfg.metadata["hook_name"] == "blocks.1.hook_resid_post"
    x = torch.randn(3, 16)
    torch.testing.assert_close(loaded(x), sae(x))


def test_gemma_scope_npz(tmp_path: Path) -> None:
    sae = random_sae("jumprelu")
    params = {name: t.detach().numpy() for name, t in sae.state_dict().items()}
    np.savez(tmp_path / "params.npz", **params)
    loaded = load_gemma_scope_npz(tmp_path / "params.npz", hook_name="blocks.3.hook_resid_post")
    x = torch.randn(5, 16)
    # Gemma Scope does not subtract b_dec from the input
    pre = x @ sae.W_enc + sae.b_enc
    expected = torch.relu(pre) * (pre > sae.threshold)
    torch.testing.assert_close(loaded.encode(x), expected)


def _set_for(lm: LoadedModel, layers: tuple[int, ...] = (1, 2)) -> SAESet:
    saes = {HookPoint(layer, "resid_post"): random_sae("topk", d_in=lm.d_model) for layer in layers}
    return SAESet({"name": lm.name, "weights_sha256": lm.weights_sha256}, saes)


def test_sae_set_round_trip_and_model_checks(tiny: LoadedModel, tmp_path: Path) -> None:
    sae_set = _set_for(tiny)
    sae_set.save(tmp_path / "set")
    loaded = SAESet.load(tmp_path / "set")
    assert loaded.layers == [1, 2]
    loaded.check_model(tiny)
    # each SAE also loads alone, with its hook point
    single = SAESet.from_single(tmp_path / "set" / "resid_post.1")
    assert single.points == [HookPoint(1, "resid_post")]

    other = LoadedModel(tiny.model, tiny.tokenizer, "other", "different-hash", "config")
    with pytest.raises(UserError, match="trained on tiny-qwen2"):
        loaded.check_model(other)
    too_deep = _set_for(tiny, (5,))
    with pytest.raises(UserError, match=r"has layers 0\.\.2"):
        too_deep.check_model(tiny)
    wide = SAESet(
        {"name": tiny.name, "weights_sha256": tiny.weights_sha256},
        {HookPoint(1, "resid_post"): random_sae("topk", d_in=32)},
    )
    with pytest.raises(UserError, match="d_model=64"):
        wide.check_model(tiny)
    with pytest.raises(UserError, match="d_in=16"):
        random_sae("topk")(torch.randn(2, 64))


def test_the_fingerprint_tells_two_trainings_of_one_recipe_apart(tiny: LoadedModel) -> None:
    """Results are keyed by the fingerprint: a set trained again from the same recipe with
    other float rounding (thread count, device) is another set, with its own results."""
    first, again = _set_for(tiny), _set_for(tiny)
    for sae_set in (first, again):
        sae_set.info["recipe_key"] = "one recipe"
    assert first.fingerprint() == again.fingerprint()
    with torch.no_grad():
        next(iter(again))[1].W_dec[0, 0] += 1e-3
    assert first.fingerprint() != again.fingerprint()


def test_token_kinds_of_a_request(tiny: LoadedModel) -> None:
    tok = Tokenizer(tiny.tokenizer, context=128)
    seq = tok.encode(Document("request", (("user", "Write a poem about the sea."),)), "x")
    kinds = seq.kinds
    text = {kind: "" for kind in TokenKind}
    for token, kind in zip(seq.input_ids, kinds, strict=True):
        text[TokenKind(kind)] += tiny.tokenizer.decode([token])
    assert "tiny test model" in text[TokenKind.SYSTEM_HEADER]
    assert text[TokenKind.USER] == "Write a poem about the sea."
    assert text[TokenKind.POST_INSTRUCTION] == "<|im_end|>\n<|im_start|>assistant\n"
    chat = tok.encode(
        Document("chat", (("user", "Write a poem."), ("assistant", "The sea is blue."))), "x"
    )
    decoded = {TokenKind(k) for k in chat.kinds}
    assert TokenKind.ASSISTANT in decoded and TokenKind.POST_INSTRUCTION not in decoded


def test_collection_masks_truncation_and_resume(
    tiny: LoadedModel, tmp_path: Path, mixture_jsonl: Path
) -> None:
    mixture = (MixtureSource(str(mixture_jsonl), 1.0),)
    points = [HookPoint(0, "resid_post"), HookPoint(1, "resid_post")]
    kwargs = dict(
        mixture=mixture,
        n_tokens=600,
        batch_size=4,
        shard_tokens=100,
        progress=False,
        mask=TokenMask(post_instruction_repeat=2),
        dtype="float32",
    )
    cache = collect_activations(tiny, points, tmp_path / "acts", **kwargs)
    assert cache.complete and cache.n_tokens >= 600
    shard = cache.load_shard(0)
    kinds = shard["kinds"]
    assert not (kinds == int(TokenKind.SYSTEM_HEADER)).any()
    assert not (kinds == int(TokenKind.PAD)).any()
    assert shard["resid_post.0"].shape == (kinds.shape[0], tiny.d_model)

    # the truncated forward gives the same activations as a full forward
    from refusal_lens.hooks import record
    from refusal_lens.saes.activations import truncated_forward

    ids = torch.tensor([[5, 6, 7, 8]])
    attn = torch.ones_like(ids)
    fast = truncated_forward(tiny, points, ids, attn)
    with torch.inference_mode(), record(tiny.model, points) as store:
        tiny.model(input_ids=ids, attention_mask=attn)
    for point in points:
        torch.testing.assert_close(fast[point], store[point][0])

    # a rerun reuses the cache; different settings in the same folder are refused
    again = collect_activations(tiny, points, tmp_path / "acts", **kwargs)
    assert again.shards == cache.shards
    with pytest.raises(UserError, match="other settings"):
        collect_activations(tiny, points[:1], tmp_path / "acts", **kwargs)

    # an interrupted collection resumes after its last written shard, with the same content
    original = cache.load_shard(2)["resid_post.1"]
    index = json.loads((tmp_path / "acts" / "index.json").read_text())
    index["shards"] = index["shards"][:2]
    index["batches_done"] = index["shards"][1]["batches_done"]
    index["complete"] = False
    (tmp_path / "acts" / "index.json").write_text(json.dumps(index))
    resumed = collect_activations(tiny, points, tmp_path / "acts", **kwargs)
    assert resumed.n_tokens == cache.n_tokens
    torch.testing.assert_close(resumed.load_shard(2)["resid_post.1"], original)


def test_shared_system_turn_is_run_once_and_collects_the_same(
    tiny: LoadedModel, tmp_path: Path, mixture_jsonl: Path
) -> None:
    """The system turn every chat row starts with (dropped by the mask) is run once as a KV
    prefix; the collected activations and kinds equal a plain forward over every token."""
    from refusal_lens.saes import activations

    kwargs = dict(
        mixture=(MixtureSource(str(mixture_jsonl), 1.0),),
        n_tokens=3000,
        batch_size=4,
        progress=False,
        dtype="float32",
    )
    points = [HookPoint(0, "resid_post"), HookPoint(1, "resid_post")]
    calls: list[int] = []
    original = activations.truncated_forward

    def counted(lm, pts, ids, mask, **extra):  # type: ignore[no-untyped-def]
        calls.append(int(mask[:, -ids.shape[1] :].sum()))  # the tokens run, not the prefix
        return original(lm, pts, ids, mask, **extra)

    activations.truncated_forward = counted
    try:
        fast = collect_activations(tiny, points, tmp_path / "fast", **kwargs)
        fast_tokens = sum(calls)
        calls.clear()
        plain = collect_activations(tiny, points, tmp_path / "plain", shared_prefix=False, **kwargs)
        plain_tokens = sum(calls)
    finally:
        activations.truncated_forward = original
    assert fast_tokens < 0.9 * plain_tokens
    assert fast.n_tokens == plain.n_tokens
    for number in range(len(plain.shards)):
        a, b = fast.load_shard(number), plain.load_shard(number)
        assert torch.equal(a["kinds"], b["kinds"])
        for point in points:
            torch.testing.assert_close(a[point.name], b[point.name], atol=1e-4, rtol=1e-4)


def planted_data(n: int = 60_000, d: int = 32, n_feat: int = 96, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_feat, d, generator=gen)
    feats /= feats.norm(dim=1, keepdim=True)
    active = (torch.rand(n, n_feat, generator=gen) < 0.03).float()
    x = (active * torch.rand(n, n_feat, generator=gen) * 3) @ feats
    return x + 0.01 * torch.randn(n, d, generator=gen), feats


# the share of planted features found with cosine > 0.9, over training seeds 0-3: TopK
# 0.95-1.00 (either select dtype), BatchTopK 0.78-0.83 (its global threshold at k = 4 leaves a
# few rare features unlearnt in 400k tokens)
@pytest.mark.parametrize(
    ("arch", "select", "found"),
    [("topk", "float32", 0.9), ("batchtopk", "float32", 0.7), ("topk", "bfloat16", 0.9)],
)
def test_trainer_recovers_planted_features(
    arch: str, select: str, found: float, tmp_path: Path
) -> None:
    x, feats = planted_data()
    cache = cache_from_tensors(tmp_path / "c", {"resid_post.0": x}, shard_tokens=20_000)
    cfg = TrainConfig(
        select_dtype=select,
        architecture=arch,
        expansion=4,
        k=4,
        batch_size=512,
        total_tokens=400_000,
        lr=4e-3,
        dead_tokens=5_000,
    )
    sae = train_saes(cache, cfg, tmp_path / "out", progress=False)["resid_post.0"]
    held = x[:4000]
    fvu = float((held - sae(held)).pow(2).sum() / (held - held.mean(0)).pow(2).sum())
    dec = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best = (feats @ dec.T).max(dim=1).values
    assert fvu < 0.3
    assert float((best > 0.9).float().mean()) > found


@pytest.mark.parametrize("arch", ["jumprelu", "standard"])
def test_dense_architectures_reduce_loss(arch: str, tmp_path: Path) -> None:
    x, _ = planted_data(n=20_000)
    cache = cache_from_tensors(tmp_path / "c", {"resid_post.0": x})
    short = TrainConfig(architecture=arch, expansion=4, batch_size=512, total_tokens=4096, lr=3e-3)
    long = TrainConfig(
        architecture=arch, expansion=4, batch_size=512, total_tokens=150_000, lr=3e-3
    )
    first = train_saes(cache, short, tmp_path / "a", progress=False)["resid_post.0"]
    last = train_saes(cache, long, tmp_path / "b", progress=False)["resid_post.0"]

    def fvu(sae) -> float:
        return float((x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())

    assert fvu(last) < 0.6 * fvu(first)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_kill_and_resume_gives_identical_weights(arch: str, tmp_path: Path) -> None:
    x, _ = planted_data(n=6_000)
    cache = cache_from_tensors(
        tmp_path / "c", {"resid_post.0": x, "resid_post.1": x * 2}, shard_tokens=1000
    )
    # a small shuffle buffer (several groups per epoch) and 40 steps of 256 = about 2 epochs
    cfg = TrainConfig(
        architecture=arch,
        expansion=2,
        k=4,
        batch_size=256,
        total_tokens=40 * 256,
        lr=3e-3,
        checkpoint_every=7,
        dead_tokens=1000,
        shuffle_buffer_bytes=2500 * 2 * 32 * 4,
    )
    whole = train_saes(cache, cfg, tmp_path / "whole", progress=False)
    train_saes(cache, cfg, tmp_path / "split", progress=False, stop_after=30)
    resumed = train_saes(cache, cfg, tmp_path / "split", progress=False)
    for point in whole:
        for name, tensor in whole[point].state_dict().items():
            torch.testing.assert_close(resumed[point].state_dict()[name], tensor, rtol=0, atol=0)


def test_resume_refuses_other_activations_and_torn_checkpoints(tmp_path: Path) -> None:
    x, _ = planted_data(n=3_000)
    first = cache_from_tensors(tmp_path / "a", {"resid_post.0": x})
    other = cache_from_tensors(tmp_path / "b", {"resid_post.1": x})
    cfg = TrainConfig(expansion=2, k=4, batch_size=256, total_tokens=20 * 256, checkpoint_every=5)
    train_saes(first, cfg, tmp_path / "run", progress=False, stop_after=10)
    with pytest.raises(UserError, match="other activations"):
        train_saes(other, cfg, tmp_path / "run", progress=False)
    state_file = tmp_path / "run" / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    state["step"] = 5  # as if killed after the layer files were written but before state.json
    state_file.write_text(json.dumps(state))
    with pytest.raises(UserError, match="killed while checkpointing"):
        train_saes(first, cfg, tmp_path / "run", progress=False)


def test_selected_entries_are_computed_in_full_precision() -> None:
    """Latents chosen from a bfloat16 product keep float32 values: `entry_values` equals the
    dense float32 product at the chosen entries."""
    torch.manual_seed(0)
    sae_in, w_enc, b_enc = torch.randn(8, 16), torch.randn(16, 64), torch.randn(64)
    low = torch.addmm(b_enc.bfloat16(), sae_in.bfloat16(), w_enc.bfloat16())
    cols = low.topk(4, dim=-1).indices.sort(dim=-1).values.reshape(-1)
    rows = torch.arange(8).repeat_interleave(4)
    exact = (sae_in @ w_enc + b_enc)[rows, cols]
    torch.testing.assert_close(entry_values(sae_in, w_enc, b_enc, rows, cols), exact)
    assert not torch.equal(low[rows, cols].float(), exact)  # bfloat16 alone would round them
    # the trainer chooses from the bfloat16 product only when asked
    for select, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        cfg = TrainConfig(expansion=4, k=4, select_dtype=select)
        trainer = LayerTrainer(cfg, SAEConfig("topk", 16, 64, k=4), 1.0, "cpu")
        assert trainer._selection_product(sae_in).dtype == dtype


def test_train_config_errors() -> None:
    with pytest.raises(UserError, match="select_dtype must be"):
        TrainConfig(select_dtype="int8")
    with pytest.raises(UserError, match="unknown architecture"):
        TrainConfig(architecture="gated")
    with pytest.raises(UserError, match="must be positive"):
        TrainConfig(k=0)
