"""One edited layer's steering hook, per call, against the path it replaced, in one process.

Arms, interleaved over `--rounds` rounds of `--calls` calls each (median seconds per call):
  current    the hook `EditLatents` installs: the selected latents are computed exactly, and
             the rest of the encoder is read only for rows where one is positive (from int8
             bounds on every pre-activation for a bfloat16 copy, else in full)
  previous   the computation it replaced: every row's full encoder product (for a bfloat16
             copy from a weight oneDNN reordered once), and membership screened with the k-th
             largest of an eighth of the latents before it is counted against all of them
  reference  the same edit as it was first computed: the plain encoder matmul, and a top-k
             over every latent for the k-th value
  counted    (a bfloat16 copy with int8 bounds only) the current hook without the bounds:
             the rows the share's bound leaves undecided are counted over the full product
on the two shapes a steered `generate` hands a hook: the prompt's forward (batch x prompt
tokens) and a decoding step (batch x 1), with the model's own activations at that layer. Each
arm's output is compared with the edit computed from exact pre-activations of every latent
(`exact_pre`): the largest difference, as a share of that edit's largest change, is far below 1
where only rounding differs and near 1 where a latent was decided otherwise. Prints the
per-call times and their ratios, and what the hooks of `--edited-layers` layers add to one
steered `generate` (a prompt forward, then a decoding step per new token) as a share of plain
`model.generate`, timed in the same script. Per-call medians over many calls are steadier than
whole-generation ratios on a CPU whose speed drifts (bench/steering_overhead.py measures
those).

    python bench/steering_hooks.py --saes SAES [--latents RUN/latents.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from generation_overhead import plain_generate
from refusal_lens.data import builtin_prompts
from refusal_lens.hooks import HookPoint, add_hooks
from refusal_lens.interventions import EditLatents
from refusal_lens.latents import LatentSet
from refusal_lens.models import ChatFormatter, load_model
from refusal_lens.saes import SAESet
from refusal_lens.saes.int8_bounds import exact_pre
from refusal_lens.saes.presets import ensure_default_sae_set


def per_call(arms: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call of each arm, the arms interleaved round by round."""
    for arm in arms.values():
        arm()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(rounds):
        for name, arm in arms.items():
            for _ in range(calls):
                start = time.perf_counter()
                arm()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--dtype", default="auto", help="the model's dtype (auto: as loaded)")
    parser.add_argument("--saes", help="SAE set (default: the model's cached quick set)")
    parser.add_argument("--latents", help="latent set: its latents at the layer are edited")
    parser.add_argument("--data-dir", help="data for training the quick set if it is missing")
    parser.add_argument("--layer", type=int, help="the edited layer (default: the set's first)")
    parser.add_argument("--n-latents", type=int, default=2, help="latents edited at the layer")
    parser.add_argument("--edited-layers", type=int, default=11)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()

    lm = load_model(args.model, dtype=args.dtype)
    formatter = ChatFormatter(lm.tokenizer)
    saes = SAESet.load(args.saes) if args.saes else ensure_default_sae_set(lm, args.data_dir)
    layer = args.layer if args.layer is not None else saes.layers[0]
    point = HookPoint(layer, "resid_post")
    sae = saes[point]
    if args.latents:
        found = [i for at, i in LatentSet.load(args.latents).top(None) if at == layer]
        latents = found[: args.n_latents]
    else:
        generator = torch.Generator().manual_seed(0)
        latents = torch.randperm(sae.d_sae, generator=generator)[: args.n_latents].tolist()
    texts = (builtin_prompts("harmful").texts() + builtin_prompts("harmless").texts())[
        : args.batch_size
    ]
    batch = formatter.encode(texts).to(lm.device)
    seen: list[torch.Tensor] = []
    with torch.inference_mode(), add_hooks(lm.model, [(point, lambda a, _p: seen.append(a))]):
        lm.model(**batch.forward_kwargs())
    prompt = seen[0].clone()
    step = prompt[:, -1:].clone()

    edit = EditLatents(saes, tuple((layer, i) for i in latents), "scale", -3.0)
    ((_, hook),) = edit.hooks(lm.model)
    copy = sae.cast(prompt.dtype) if prompt.dtype in (torch.bfloat16, torch.float16) else sae
    index = torch.tensor(latents)
    state: dict[str, torch.Tensor] = {}

    k = sae.cfg.k or sae.d_sae

    def edited(act: torch.Tensor, values_of: Callable[[torch.Tensor], torch.Tensor]):
        """The hook's edit, with the selected latents' activations from `values_of`."""
        keep = edit.where.mask(act, None, state)
        assert keep is not None
        values = values_of(act.reshape(-1, act.shape[-1]).to(copy.W_enc.dtype))
        delta = ((values * -3.0 - values) @ copy.W_dec[index]).reshape(act.shape)
        return act + (delta * keep.unsqueeze(-1).to(delta.dtype)).to(act.dtype)

    def top_k(pre: torch.Tensor) -> torch.Tensor:
        kth = pre.topk(k, dim=-1, sorted=False).values.amin(-1, True)
        selected = pre[:, index]
        return torch.relu(selected) * (selected >= kth)

    def reference(act: torch.Tensor) -> torch.Tensor:
        return edited(act, lambda flat: top_k((flat - copy.b_dec) @ copy.W_enc + copy.b_enc))

    def exact(act: torch.Tensor) -> torch.Tensor:
        return edited(act, lambda flat: top_k(exact_pre(flat - copy.b_dec, copy.W_enc, copy.b_enc)))

    def screened_count(flat: torch.Tensor) -> torch.Tensor:
        # the computation the hook ran before: every row's full encoder product, a screen
        # with the k-th largest of an eighth of the latents, then a count over all of them
        pre = copy.pre_activation(flat)
        selected = pre[:, index]
        open_ = selected > 0
        share = max(4 * k, sae.d_sae // 8)
        if 2 * share <= sae.d_sae and bool(open_.any()):
            floor = pre[:, :share].topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
            open_ &= selected >= floor
        inside = torch.zeros_like(open_)
        rows, cols = open_.nonzero(as_tuple=True)
        if rows.numel():
            above = (pre[rows] > selected[rows, cols].unsqueeze(-1)).sum(-1, dtype=torch.int32)
            inside[rows, cols] = above < k
        return torch.relu(selected) * inside

    def previous(act: torch.Tensor) -> torch.Tensor:
        return edited(act, screened_count)

    def current(act: torch.Tensor) -> torch.Tensor:
        return hook(act, point)

    bounds = copy._int8_bounds

    def counted(act: torch.Tensor) -> torch.Tensor:
        copy._int8_bounds = None  # the hook as it runs where there are no int8 bounds
        try:
            return hook(act, point)
        finally:
            copy._int8_bounds = bounds

    arms = {"current": current, "previous": previous, "reference": reference}
    if bounds is not None:
        arms["counted"] = counted
    with torch.inference_mode():
        # the largest difference from the edit on exact pre-activations, as a share of that
        # edit's largest change: rounding is far below 1, a latent decided otherwise near 1
        differing = {}
        for shape, act in (("prompt", prompt), ("decoding step", step)):
            want = exact(act).float()
            size = float((want - act.float()).abs().max()) or 1.0
            differing[shape] = {
                arm: round(float((fn(act).float() - want).abs().max()) / size, 4)
                for arm, fn in arms.items()
            }
        timings = {
            "prompt": per_call(
                {arm: (lambda fn=fn: fn(prompt)) for arm, fn in arms.items()},
                args.rounds,
                max(2, args.calls // 10),
            ),
            "decoding step": per_call(
                {arm: (lambda fn=fn: fn(step)) for arm, fn in arms.items()},
                args.rounds,
                args.calls,
            ),
        }
    formatter.__dict__["stop_token_ids"] = []  # a fixed number of new tokens
    plain = statistics.median(
        timed(lambda: plain_generate(lm, formatter, texts, args.max_new_tokens, len(texts)))
        for _ in range(3)
    )
    steps = args.max_new_tokens - 1
    added = {
        arm: args.edited_layers * (timings["prompt"][arm] + steps * timings["decoding step"][arm])
        for arm in arms
    }
    result = {
        "model": lm.name,
        "dtype": str(lm.dtype),
        "saes": saes.path,
        "layer": layer,
        "latents": latents,
        "k": sae.cfg.k,
        "batch_size": len(texts),
        "prompt_tokens": prompt.shape[1],
        "int8_bounds": bounds is not None,
        "largest_difference_from_exact_edit": differing,
        "ms_per_call": {
            shape: {arm: round(1e3 * seconds, 3) for arm, seconds in t.items()}
            for shape, t in timings.items()
        },
        "ratio_current_vs_previous": {
            shape: round(t["current"] / t["previous"], 3) for shape, t in timings.items()
        },
        "ratio_current_vs_reference": {
            shape: round(t["current"] / t["reference"], 3) for shape, t in timings.items()
        },
        "plain_generate_s": round(plain, 3),
        "edited_layers": args.edited_layers,
        "hooks_share_of_plain_generate": {
            arm: round(seconds / plain, 3) for arm, seconds in added.items()
        },
    }
    print(json.dumps(result, indent=2))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
