"""Training SAEs on cached activations: several layers in one loop, checkpointed, resumable.

TopK / BatchTopK (default) use the sparse path of `sparse_ops`: a dense no-grad encoder matmul
picks the active latents, then the loss backpropagates only through them (`N * k * d_in` work
instead of `N * d_sae * d_in`), and the decoder is an `embedding_bag`. The auxiliary TopK loss
(Gao et al. 2024) reconstructs the residual error with the top `aux_k` *dead* latents so they
come back. JumpReLU (straight-through threshold, L0 penalty) and ReLU (L1 penalty weighted by
decoder norms) train densely. For all: Adam, linear warm-up and final decay, decoder rows kept
at unit norm (the gradient's radial component removed, rows renormalised after each step),
`b_dec` initialised at the geometric median of a data sample, inputs scaled by one scalar per
layer so that `E||x||^2 = d_in` (folded into the weights when saved, so the saved SAE acts on
raw activations).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import UserError
from ..executors.base import Executor
from ..runs import write_json
from .activations import BUFFER_BYTES, ActivationCache
from .architectures import SAEConfig, SparseAutoencoder, build_sae
from .io import load_sae, save_sae
from .sparse_ops import entry_values, sparse_reconstruction

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    architecture: str = "topk"
    expansion: int = 8  # d_sae = expansion * d_in
    k: int = 32
    batch_size: int = 4096
    total_tokens: int = 2_000_000
    lr: float = 1e-3
    warmup_frac: float = 0.02
    decay_frac: float = 0.2
    aux_k: int = 128
    aux_coef: float = 1 / 32
    dead_tokens: int = 200_000  # a latent silent for this many tokens counts as dead
    l1_coef: float = 5.0  # ReLU
    l0_coef: float = 5e-3  # JumpReLU
    jump_bandwidth: float = 1e-3
    init_threshold: float = 1e-3
    b_dec_init: str = "geometric_median"  # or "mean", "zeros"
    # the product each token's top k is chosen from: "float32", or "bfloat16" (faster on a CPU
    # with bfloat16 instructions: `bench/sae_training.py --arms ours@cpu,ours-bf16@cpu`); the
    # chosen entries' values and every gradient stay float32 either way (TopK and BatchTopK)
    select_dtype: str = "float32"
    checkpoint_every: int = 50
    shuffle_buffer_bytes: int = BUFFER_BYTES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "batchtopk", "jumprelu", "standard"):
            raise UserError(
                f"unknown architecture {self.architecture!r}; use topk, batchtopk, jumprelu or "
                "standard (ReLU + L1)"
            )
        for name in ("expansion", "k", "batch_size", "total_tokens"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.select_dtype not in ("float32", "bfloat16"):
            raise UserError(f"select_dtype must be float32 or bfloat16, got {self.select_dtype!r}")
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise UserError("b_dec_init must be geometric_median, mean or zeros")

    @property
    def n_steps(self) -> int:
        return max(1, self.total_tokens // self.batch_size)

    def lr_at(self, step: int) -> float:
        warmup = max(1, int(self.warmup_frac * self.n_steps))
        decay_start = int((1 - self.decay_frac) * self.n_steps)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if step >= decay_start and self.decay_frac > 0:
            return self.lr * max(0.0, (self.n_steps - step) / (self.n_steps - decay_start))
        return self.lr


def geometric_median(points: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Weiszfeld's algorithm."""
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1 / (points - median).norm(dim=1).clamp_min(1e-6)
        median = (weights[:, None] * points).sum(0) / weights.sum()
    return median


class _JumpReLU(torch.autograd.Function):
    """`pre * H(pre - threshold)`; the threshold's pseudo-gradient uses a rectangle kernel
    (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> Any:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        pre, threshold = ctx.saved_tensors
        window = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
        grad_pre = grad * (pre > threshold)
        grad_threshold = -(threshold / ctx.bandwidth * window * grad).sum(0)
        return grad_pre, grad_threshold, None


class _JumpHeaviside(torch.autograd.Function):
    """H(pre - threshold) with a rectangle-kernel pseudo-gradient for the threshold."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> Any:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        pre, threshold = ctx.saved_tensors
        window = ((pre - threshold).abs() < ctx.bandwidth / 2).to(pre.dtype)
        grad_threshold = -(grad * window / ctx.bandwidth).sum(0)
        return None, grad_threshold, None


@dataclass
class StepStats:
    loss: float
    fvu: float
    l0: float
    dead: float


class LayerTrainer:
    """One SAE, its optimiser and its bookkeeping."""

    def __init__(
        self,
        cfg: TrainConfig,
        sae_cfg: SAEConfig,
        scale: float,
        device: str | torch.device = "cpu",
    ) -> None:
        self.cfg = cfg
        self.scale = scale
        self.device = torch.device(device)
        self.sae = build_sae(sae_cfg).to(self.device)
        self.since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=self.device)
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))

    def initialise(self, sample: torch.Tensor, generator: torch.Generator) -> None:
        sae, d_sae = self.sae, self.sae.d_sae
        with torch.no_grad():
            # drawn on the CPU generator, so the initial weights do not depend on the device
            w = torch.randn(d_sae, sae.d_in, generator=generator).to(self.device)
            sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec.t())
            x = sample.to(self.device) / self.scale
            if self.cfg.b_dec_init == "geometric_median":
                sae.b_dec.copy_(geometric_median(x))
            elif self.cfg.b_dec_init == "mean":
                sae.b_dec.copy_(x.mean(0))
            if isinstance(getattr(sae, "threshold", None), torch.Tensor):
                initial = self.cfg.init_threshold if sae.cfg.architecture == "jumprelu" else 0.0
                sae.threshold.fill_(initial)

    def step(self, x: torch.Tensor, lr: float) -> StepStats:
        x = x.to(self.device, non_blocking=True) / self.scale
        arch = self.sae.cfg.architecture
        if arch in ("topk", "batchtopk"):
            loss, recon_err, n_active, fired = self._sparse_loss(x, arch)
        else:
            loss, recon_err, n_active, fired = self._dense_loss(x, arch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._remove_radial_grad()
        self.optimizer.step()
        self.sae.normalize_decoder()
        if arch == "jumprelu":
            with torch.no_grad():
                self.sae.threshold.clamp_(min=1e-6)
        self.since_fired += x.shape[0]
        self.since_fired[fired] = 0
        total_var = (x - x.mean(0)).pow(2).sum()
        return StepStats(
            loss=float(loss.detach()),
            fvu=float(recon_err / total_var),
            l0=n_active / x.shape[0],
            dead=float((self.since_fired >= self.cfg.dead_tokens).float().mean()),
        )

    def _sparse_loss(
        self, x: torch.Tensor, arch: str
    ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        sae, n = self.sae, x.shape[0]
        b_dec_in = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
        with torch.no_grad():
            sae_in = x - sae.b_dec if b_dec_in is not None else x
            pre = self._selection_product(sae_in)
        k = self.cfg.k
        if arch == "topk":
            cols = pre.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values.reshape(-1)
            rows = torch.arange(n, device=x.device).repeat_interleave(k)
        else:
            flat = pre.flatten().topk(k * n, sorted=False).indices.sort().values
            rows, cols = flat // sae.d_sae, flat % sae.d_sae
        with torch.no_grad():
            selected = self._values(sae_in, pre, rows, cols)
        if arch == "batchtopk" and bool((selected > 0).any()):
            self._update_threshold(float(selected[selected > 0].min()))
        decoded = sparse_reconstruction(
            x, b_dec_in, sae.W_enc, sae.b_enc, sae.W_dec, rows, cols, selected
        )
        recon = decoded + sae.b_dec
        err = (recon - x).pow(2).sum()
        loss = err / n + self._aux_loss(x, recon.detach(), pre)
        fired = torch.bincount(cols[selected > 0], minlength=sae.d_sae) > 0
        return loss, err.detach(), int((selected > 0).sum()), fired

    def _selection_product(self, sae_in: torch.Tensor) -> torch.Tensor:
        """The pre-activations each token's latents are chosen from (no gradient)."""
        sae = self.sae
        if self.cfg.select_dtype == "bfloat16":
            low = torch.bfloat16
            return torch.addmm(sae.b_enc.to(low), sae_in.to(low), sae.W_enc.to(low))
        return sae_in @ sae.W_enc + sae.b_enc

    def _values(
        self, sae_in: torch.Tensor, pre: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """The chosen entries' pre-activations in the weights' precision."""
        if pre.dtype == self.sae.W_enc.dtype:
            return pre[rows, cols]
        return entry_values(sae_in, self.sae.W_enc, self.sae.b_enc, rows, cols)

    def _aux_loss(self, x: torch.Tensor, recon: torch.Tensor, pre: torch.Tensor) -> Any:
        dead = self.since_fired >= self.cfg.dead_tokens
        n_dead = int(dead.sum())
        if n_dead == 0 or self.cfg.aux_coef == 0:
            return 0.0
        sae, n = self.sae, x.shape[0]
        residual = x - recon
        k_aux = min(self.cfg.aux_k, n_dead)
        masked = pre.masked_fill(~dead, float("-inf"))
        cols = masked.topk(k_aux, dim=-1, sorted=False).indices.sort(dim=-1).values.reshape(-1)
        rows = torch.arange(n, device=x.device).repeat_interleave(k_aux)
        b_dec_in = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
        with torch.no_grad():
            sae_in = x - sae.b_dec if b_dec_in is not None else x
            values = self._values(sae_in, pre, rows, cols)
        aux_recon = sparse_reconstruction(
            x, b_dec_in, sae.W_enc, sae.b_enc, sae.W_dec, rows, cols, values
        )
        # same units as the main loss (summed squared error per token), as in SAELens
        return self.cfg.aux_coef * (aux_recon - residual).pow(2).sum() / n

    def _update_threshold(self, batch_min: float) -> None:
        with torch.no_grad():
            current = float(self.sae.threshold[0])
            new = batch_min if current <= 0 else 0.99 * current + 0.01 * batch_min
            self.sae.threshold.fill_(new)

    def _dense_loss(
        self, x: torch.Tensor, arch: str
    ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        sae, n = self.sae, x.shape[0]
        pre = sae.pre_activation(x)
        if arch == "jumprelu":
            threshold = sae.threshold  # kept >= 1e-6 after every step
            gate = _JumpHeaviside.apply(pre, threshold, self.cfg.jump_bandwidth)
            feats = _JumpReLU.apply(torch.relu(pre), threshold, self.cfg.jump_bandwidth)
            sparsity = self.cfg.l0_coef * gate.sum(-1).mean()
        else:
            feats = torch.relu(pre)
            sparsity = self.cfg.l1_coef * (feats * sae.W_dec.norm(dim=1)).sum(-1).mean() / sae.d_in
        recon = feats @ sae.W_dec + sae.b_dec
        err = (recon - x).pow(2).sum()
        fired = (feats.detach() > 0).any(0)
        return err / n + sparsity, err.detach(), int((feats.detach() > 0).sum()), fired

    @torch.no_grad()
    def _remove_radial_grad(self) -> None:
        w, grad = self.sae.W_dec, self.sae.W_dec.grad
        if grad is not None:
            grad -= (grad * w).sum(dim=1, keepdim=True) * w

    # -- checkpoints ------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            f"sae.{k}": v.detach().to("cpu", copy=True) for k, v in self.sae.state_dict().items()
        }
        tensors["since_fired"] = self.since_fired.to("cpu", copy=True)
        params = dict(self.sae.named_parameters())
        for name, param in params.items():
            state = self.optimizer.state.get(param, {})
            for key, value in state.items():
                tensors[f"adam.{name}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        sae_state = {k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}
        self.sae.load_state_dict(sae_state)
        self.since_fired = tensors["since_fired"].to(self.device)
        for name, param in self.sae.named_parameters():
            # Adam keeps its step count on the CPU and its moments beside the parameter
            state = {
                key.rsplit(".", 1)[1]: value if value.ndim == 0 else value.to(self.device)
                for key, value in tensors.items()
                if key.startswith(f"adam.{name}.")
            }
            if state:
                self.optimizer.state[param] = state


ProgressFn = Callable[[int, dict[str, StepStats]], None]


def train_saes(
    cache: ActivationCache,
    cfg: TrainConfig,
    out: str | Path,
    *,
    metadata: dict[str, dict[str, Any]] | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    points: Sequence[str] | None = None,
) -> dict[str, SparseAutoencoder]:
    """Train one SAE per cached hook point (or per point of `points`, a layer group);
    checkpoints in `out/checkpoint/`, resumable.

    Each SAE starts from its own seeded generator (`point_seed`) and every SAE steps on the same
    batches, so an SAE trained in a group, alone or with the others, is the same SAE, up to the
    float rounding of a different thread count.

    `stop_after` ends the run after that many steps (as if killed), for tests and for
    splitting a long run over sessions. `device` is where the SAEs train (batches stream from
    the on-disk cache to it); checkpoints are device-free, so a run can resume elsewhere.
    Returns the trained SAEs on the CPU (input scale folded in).
    """
    folder = Path(out)
    ckpt_dir = folder / "checkpoint"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    sample = cache.sample(4096, seed=cfg.seed)
    d_in = int(sample[cache.points[0]].shape[1])
    trainers: dict[str, LayerTrainer] = {}
    chosen = list(cache.points if points is None else points)
    unknown = sorted(set(chosen) - set(cache.points))
    if unknown or not chosen:
        raise UserError(
            f"the activation cache has no hook point {', '.join(unknown) or '(none asked)'}; it "
            f"holds {', '.join(cache.points)}"
        )
    for point in chosen:
        generator = torch.Generator().manual_seed(point_seed(cfg.seed, point))
        x = sample[point]
        scale = float(x.pow(2).sum(-1).mean().div(d_in).sqrt().clamp_min(1e-8))
        arch = cfg.architecture
        sae_cfg = SAEConfig(
            architecture=arch,
            d_in=d_in,
            d_sae=cfg.expansion * d_in,
            k=cfg.k if arch in ("topk", "batchtopk") else None,
            metadata={**(metadata or {}).get(point, {}), "hook_name": point},
        )
        trainer = LayerTrainer(cfg, sae_cfg, scale, device)
        trainer.initialise(x, generator)
        trainers[point] = trainer

    source = {"cache_key": cache.index.get("key"), "points": chosen}
    start = _resume(ckpt_dir, cfg, trainers, source)
    bar = tqdm(
        total=cfg.n_steps, initial=start, unit="step", desc="train SAEs", disable=not progress
    )
    stats: dict[str, StepStats] = {}
    step = start
    begun = time.perf_counter()
    batches = cache.batches(cfg.batch_size, cfg.seed, start, cfg.shuffle_buffer_bytes)
    for step, batch in enumerate(batches, start=start):
        if step >= cfg.n_steps or (stop_after is not None and step >= start + stop_after):
            break
        lr = cfg.lr_at(step)
        stats = {point: trainer.step(batch[point], lr) for point, trainer in trainers.items()}
        bar.update(1)
        bar.set_postfix(_postfix(stats))
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.n_steps:
            _checkpoint(ckpt_dir, cfg, trainers, step + 1, stats, source)
    bar.close()
    log.info("trained %d steps in %.1fs", step - start, time.perf_counter() - begun)
    return {point: finished_sae(trainer) for point, trainer in trainers.items()}


def point_seed(seed: int, point: str) -> int:
    """The seed of one hook point's SAE: the run's seed and the point's name, nothing else."""
    digest = hashlib.sha256(f"{seed}\x1f{point}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


def train_layer_groups(
    cache: ActivationCache,
    cfg: TrainConfig,
    out: str | Path,
    executor: Executor,
    *,
    metadata: dict[str, dict[str, Any]] | None = None,
    groups: int | None = None,
) -> dict[str, SparseAutoencoder]:
    """`train_saes` with the hook points split into `groups` layer groups (default: one per
    worker), each a work item that trains its SAEs where the executor puts it, into
    `out/groups/NN/` (its own resumable checkpoint; every worker reads the activation cache
    and writes its group from the same folders: a shared filesystem on a cluster)."""
    n = max(1, min(groups or executor.parallelism, len(cache.points)))
    chosen = [cache.points[i::n] for i in range(n)]
    shared = {"cache": str(Path(cache.folder).resolve()), "cfg": asdict(cfg), "metadata": metadata}
    items = [
        {"points": points, "out": str((Path(out) / "groups" / f"{i:02d}").resolve())}
        for i, points in enumerate(chosen)
    ]
    trained: dict[str, SparseAutoencoder] = {}

    def finished(index: int, result: Any) -> None:
        if not isinstance(result, dict) or sorted(result) != sorted(chosen[index]):
            raise UserError(f"layer group {index} came back without its SAEs {chosen[index]}")
        for point, folder in result.items():
            trained[point] = load_sae(folder).requires_grad_(False)

    executor.map("train_saes", shared, items, finished, desc="SAE layer groups")
    return {point: trained[point] for point in cache.points}


def train_group_item(shared: dict[str, Any], item: dict[str, Any], device: Any) -> dict[str, str]:
    """A layer group's work item: train its SAEs and save each (SAELens format) where the
    driver reads it; returns point -> folder."""
    cache = ActivationCache.open(shared["cache"])
    cfg = TrainConfig(**shared["cfg"])
    folder = Path(item["out"])
    saes = train_saes(
        cache,
        cfg,
        folder,
        metadata=shared["metadata"],
        progress=False,
        device=device,
        points=item["points"],
    )
    return {point: str(save_sae(sae, folder / "finished" / point)) for point, sae in saes.items()}


def final_stats(training: str | Path) -> dict[str, Any]:
    """Each SAE's last step statistics, from the checkpoint of a run or of its layer groups."""
    folder = Path(training)
    states = [folder / "checkpoint" / "state.json"]
    states += sorted(folder.glob("groups/*/checkpoint/state.json"))
    stats: dict[str, Any] = {}
    for state in states:
        if state.exists():
            stats.update(json.loads(state.read_text()).get("stats", {}))
    return stats


def finished_sae(trainer: LayerTrainer) -> SparseAutoencoder:
    """A copy of the trainer's SAE that acts on raw activations (input scale folded in)."""
    sae = build_sae(trainer.sae.cfg)
    sae.load_state_dict(trainer.sae.state_dict())
    sae.fold_input_scale(trainer.scale)
    return sae.requires_grad_(False)


def _postfix(stats: dict[str, StepStats]) -> dict[str, str]:
    mean = {
        name: sum(getattr(s, name) for s in stats.values()) / len(stats)
        for name in ("loss", "fvu", "l0", "dead")
    }
    return {
        "loss": f"{mean['loss']:.3g}",
        "fvu": f"{mean['fvu']:.3f}",
        "L0": f"{mean['l0']:.0f}",
        "dead": f"{mean['dead']:.2%}",
    }


def _checkpoint(
    ckpt_dir: Path,
    cfg: TrainConfig,
    trainers: dict[str, LayerTrainer],
    step: int,
    stats: dict[str, StepStats],
    source: dict[str, Any],
) -> None:
    # each file records its step; a kill between files and state.json is caught on resume
    for point, trainer in trainers.items():
        tmp = ckpt_dir / f"{point}.safetensors.tmp"
        save_file(trainer.state_tensors(), str(tmp), metadata={"step": str(step)})
        os.replace(tmp, ckpt_dir / f"{point}.safetensors")
    write_json(
        ckpt_dir / "state.json",
        {
            "step": step,
            "source": source,
            "config": asdict(cfg),
            "scales": {p: t.scale for p, t in trainers.items()},
            "stats": {p: asdict(s) for p, s in stats.items()},
        },
    )


def _resume(
    ckpt_dir: Path, cfg: TrainConfig, trainers: dict[str, LayerTrainer], source: dict[str, Any]
) -> int:
    state_file = ckpt_dir / "state.json"
    if not state_file.exists():
        return 0
    state = json.loads(state_file.read_text())
    if state["config"] != json.loads(json.dumps(asdict(cfg))):
        raise UserError(
            f"{ckpt_dir} holds a checkpoint of a run with other training settings; use another "
            "--out or delete that folder"
        )
    if state.get("source") != source:
        raise UserError(
            f"{ckpt_dir} holds a checkpoint trained on other activations (cache or hook points); "
            "use another --out or delete that folder"
        )
    for point, trainer in trainers.items():
        path = ckpt_dir / f"{point}.safetensors"
        with safe_open(path, "pt") as handle:
            saved_step = (handle.metadata() or {}).get("step")
        if saved_step != str(state["step"]):
            raise UserError(
                f"{path} is from step {saved_step}, not {state['step']} (the run was killed while "
                "checkpointing); delete the checkpoint folder to restart training"
            )
        trainer.scale = float(state["scales"][point])
        trainer.load_state_tensors(load_file(path))
    log.info("resuming SAE training at step %d", state["step"])
    return int(state["step"])
