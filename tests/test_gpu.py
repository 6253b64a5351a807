"""The GPU path: every stage on CUDA gives what it gives on the CPU (skipped without a GPU).

Run on a machine with a GPU: `python -m pytest tests/test_gpu.py`. Float32 with TF32 off, so
CPU and GPU differ only by kernel summation order.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from conftest import random_sae_set
from refusal_lens.attribution import AttributionSettings, attribute
from refusal_lens.direction import Direction, DirectionSettings, find_direction
from refusal_lens.generation import generate
from refusal_lens.hooks import HookPoint
from refusal_lens.interventions import EditLatents, Intervention, apply
from refusal_lens.judges import RefusalTokens
from refusal_lens.models import ChatFormatter, LoadedModel
from refusal_lens.runs import RunDir
from refusal_lens.saes import SAESet
from refusal_lens.saes.activations import TokenMask, cache_from_tensors, collect_activations
from refusal_lens.saes.mixture import MixtureSource
from refusal_lens.saes.training import TrainConfig, train_saes
from refusal_lens.teacher_forcing import completion_nll
from test_direction import _data as direction_data
from test_saes import planted_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = [
    "Explain how to hack a computer.",
    "Write a poem about the sea.",
    "Tell me how to bake bread with flour and water.",
]
LATENTS = ((0, 3), (1, 17), (1, 200), (2, 9))


@pytest.fixture(autouse=True)
def _exact_float32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def on_gpu(lm: LoadedModel, dtype: torch.dtype = torch.float32) -> LoadedModel:
    model = copy.deepcopy(lm.model).to("cuda", dtype)
    return LoadedModel(model, lm.tokenizer, lm.name, lm.weights_sha256, lm.source)


@pytest.fixture(scope="module")
def saes(tiny: LoadedModel) -> SAESet:
    return random_sae_set(tiny)


@pytest.fixture(scope="module")
def direction(tiny: LoadedModel) -> Direction:
    torch.manual_seed(3)
    return Direction(torch.randn(tiny.d_model) * 4, 1, -1, {"name": tiny.name})


def _interventions(saes: SAESet, direction: Direction) -> dict[str, list[Intervention]]:
    return {
        "none": [],
        "ablation": [direction.ablation()],
        "scale": [EditLatents(saes, LATENTS, "scale", -3.0)],
        "set": [EditLatents(saes, LATENTS, "set", 4.0, edit_sinks=True)],
    }


def _last_logits(lm: LoadedModel, formatter: ChatFormatter, interventions) -> torch.Tensor:
    batch = formatter.encode(PROMPTS).to(lm.device)
    with apply(lm.model, interventions), torch.no_grad():
        return lm.model(**batch.forward_kwargs()).logits[:, -1].float().cpu()


def test_interventions_give_the_cpu_logits(
    tiny: LoadedModel, formatter: ChatFormatter, saes: SAESet, direction: Direction
) -> None:
    gpu = on_gpu(tiny)
    for name, interventions in _interventions(saes, direction).items():
        cpu_logits = _last_logits(tiny, formatter, interventions)
        gpu_logits = _last_logits(gpu, formatter, interventions)
        torch.testing.assert_close(gpu_logits, cpu_logits, atol=1e-4, rtol=1e-4, msg=name)


def test_steered_generation_gives_the_cpu_text(
    tiny: LoadedModel, formatter: ChatFormatter, saes: SAESet, direction: Direction
) -> None:
    gpu = on_gpu(tiny)
    for name, interventions in _interventions(saes, direction).items():
        kwargs = dict(max_new_tokens=12, batch_size=2, interventions=interventions, progress=False)
        cpu_text = generate(tiny, formatter, PROMPTS, **kwargs)
        assert generate(gpu, formatter, PROMPTS, **kwargs) == cpu_text, name


def test_bfloat16_model_with_float32_saes(
    tiny: LoadedModel, formatter: ChatFormatter, saes: SAESet, direction: Direction
) -> None:
    gpu = on_gpu(tiny, torch.bfloat16)
    clean = _last_logits(gpu, formatter, [])
    assert torch.equal(_last_logits(gpu, formatter, [EditLatents(saes, ())]), clean)
    for name, interventions in _interventions(saes, direction).items():
        logits = _last_logits(gpu, formatter, interventions)
        assert torch.isfinite(logits).all(), name
        texts = generate(gpu, formatter, PROMPTS, max_new_tokens=6, interventions=interventions)
        assert len(texts) == len(PROMPTS), name


def test_attribution_gives_the_cpu_scores(
    tiny: LoadedModel, formatter: ChatFormatter, saes: SAESet, direction: Direction
) -> None:
    settings = AttributionSettings(steps=4, batch_size=2)
    runs = {
        device: attribute(
            lm, formatter, saes, direction, PROMPTS, 5, settings=settings, progress=False
        )
        for device, lm in (("cpu", tiny), ("cuda", on_gpu(tiny)))
    }
    cpu, gpu = runs["cpu"], runs["cuda"]
    torch.testing.assert_close(gpu.metric_clean, cpu.metric_clean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.metric_ablated, cpu.metric_ablated, atol=1e-4, rtol=1e-4)
    for layer, scores in cpu.scores.items():
        assert torch.equal(gpu.candidates[layer], cpu.candidates[layer])
        torch.testing.assert_close(gpu.scores[layer], scores, atol=1e-4, rtol=1e-3)


def test_direction_search_gives_the_cpu_direction(
    tiny: LoadedModel, formatter: ChatFormatter, tmp_path: Path
) -> None:
    tokens = RefusalTokens.from_phrases(tiny.tokenizer)
    settings = DirectionSettings(
        filter_pools=False, kl_threshold=float("inf"), induce_threshold=float("-inf"), batch_size=2
    )
    found = {
        device: find_direction(
            lm, formatter, direction_data(), tokens, settings, RunDir(tmp_path / device)
        )
        for device, lm in (("cpu", tiny), ("cuda", on_gpu(tiny)))
    }
    cpu, gpu = found["cpu"], found["cuda"]
    assert (gpu.position, gpu.layer) == (cpu.position, cpu.layer)
    assert gpu.vector.device.type == "cpu"
    torch.testing.assert_close(gpu.vector, cpu.vector, atol=1e-4, rtol=1e-4)


def test_teacher_forced_likelihood_gives_the_cpu_values(
    tiny: LoadedModel, formatter: ChatFormatter, saes: SAESet, direction: Direction
) -> None:
    answers = ["Sure, here is how.", "I'm sorry, I can't.", "Mix flour and water."]
    gpu = on_gpu(tiny)
    for name, interventions in _interventions(saes, direction).items():
        kwargs = dict(interventions=interventions, batch_size=2)
        cpu_nll = completion_nll(tiny, formatter, PROMPTS, answers, **kwargs)
        gpu_nll = completion_nll(gpu, formatter, PROMPTS, answers, **kwargs)
        assert gpu_nll == pytest.approx(cpu_nll, rel=1e-4, abs=1e-4), name


def test_activation_collection_gives_the_cpu_cache(
    tiny: LoadedModel, tmp_path: Path, mixture_jsonl: Path
) -> None:
    points = [HookPoint(0, "resid_post"), HookPoint(2, "resid_post")]
    kwargs = dict(
        mixture=(MixtureSource(str(mixture_jsonl), 1.0),),
        n_tokens=400,
        batch_size=4,
        progress=False,
        mask=TokenMask(),
        dtype="float32",
    )
    cpu = collect_activations(tiny, points, tmp_path / "cpu", **kwargs)
    gpu = collect_activations(on_gpu(tiny), points, tmp_path / "gpu", **kwargs)
    cpu_shard, gpu_shard = cpu.load_shard(0), gpu.load_shard(0)
    assert torch.equal(gpu_shard["kinds"], cpu_shard["kinds"])
    for point in points:
        assert gpu_shard[point.name].device.type == "cpu"
        torch.testing.assert_close(
            gpu_shard[point.name], cpu_shard[point.name], atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "jumprelu"])
def test_sae_training_on_gpu_matches_cpu_and_resumes(arch: str, tmp_path: Path) -> None:
    x, _ = planted_data(n=8_000)
    cache = cache_from_tensors(tmp_path / "c", {"resid_post.0": x}, shard_tokens=4_000)
    cfg = TrainConfig(
        architecture=arch, expansion=4, k=4, batch_size=256, total_tokens=256 * 6, lr=1e-3
    )
    cpu = train_saes(cache, cfg, tmp_path / "cpu", progress=False)["resid_post.0"]
    gpu = train_saes(cache, cfg, tmp_path / "gpu", progress=False, device="cuda")["resid_post.0"]
    assert gpu.W_dec.device.type == "cpu"
    for name, value in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[name], value, atol=1e-4, rtol=1e-3, msg=name)

    # killed on the GPU after 3 steps, resumed on the GPU: same weights as the whole run
    folder = tmp_path / "killed"
    train_saes(cache, cfg, folder, progress=False, device="cuda", stop_after=3)
    resumed = train_saes(cache, cfg, folder, progress=False, device="cuda")["resid_post.0"]
    for name, value in gpu.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, atol=1e-5, rtol=1e-4)


def test_topk_membership_on_the_gpu_equals_the_cpu_screen(tiny: LoadedModel) -> None:
    """On an accelerator a top-k decides membership (no per-step device waits); it gives the
    activations the CPU's screened count gives, on the same inputs."""
    sae = random_sae_set(tiny, "topk", d_sae=1024)[HookPoint(1, "resid_post")]
    sae_in = torch.randn(40, tiny.d_model)
    latents = torch.arange(sae.d_sae)
    on_cpu = sae.latent_values(sae_in, latents)
    on_gpu = copy.deepcopy(sae).cuda().latent_values(sae_in.cuda(), latents.cuda())
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-4)
