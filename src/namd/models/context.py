"""The context C that the U-Net cross-attends to: the shared interface and a cache.

Every context encoder maps a batch of EHR records to C of shape (B, m, D):

    encoder = build_context_encoder(cfg.text)   # namd.models.context_factory
    encoder.dim          # D, the U-Net's cross-attention width (UNet2DConditionModel
                         #    cross_attention_dim)
    encoder.n_tokens     # m, the number of context vectors per record
    C = encoder(ehrs)    # (B, m, D) float32, on the encoder's device; differentiable in the
                         #    trainable parameters only
    encoder.null_context(B)            # (B, m, D) the null prompt: zeros or the empty sentence
    encoder.trainable_parameters()     # soft prompts, or the structured MLP
    encoder.trainable_state_dict()     # name -> tensor, for safetensors checkpoints
    encoder.load_trainable_state_dict(sd)
    cache = ContextCache(encoder); C = cache(ehrs)   # each record's C computed once, no grad

Two encoders implement it: `namd.models.text.LLMContextEncoder` (paper 3.3.1: frozen language
model + m x n soft prompts) and `namd.models.structured.StructuredEncoder` (beyond the paper: an
MLP over the same 13 fields, to measure what the language model adds).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from namd.cohort.ehr import EHR
from namd.run.provenance import progress


class ContextEncoder(nn.Module, ABC):
    """Base class: EHR records -> context C (B, m, D), float32.

    Subclasses set `dim` (D) and `n_tokens` (m) and implement `forward` and `cache_key`. Only
    parameters with requires_grad=True count as trainable (and are saved in checkpoints).
    """

    dim: int
    n_tokens: int

    @abstractmethod
    def forward(self, ehrs: Sequence[EHR]) -> Tensor:
        """C for each record: (len(ehrs), n_tokens, dim), float32."""

    @abstractmethod
    def cache_key(self, ehr: EHR) -> str:
        """A string equal for two records exactly when they must get the same C."""

    @property
    def device(self) -> torch.device:
        """Where C is produced (the device of the trainable parameters)."""
        return next(iter(self.trainable_parameters())).device

    # diffusion.null_context, set by the factory: "zeros" or "empty_prompt"
    null_mode: str = "zeros"

    def null_context(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """The null prompt of condition dropout, guidance and the image-only ablation (B, m, D).

        "zeros" (CPU presets): with an all-zero C every cross-attention key and value is the same
        (diffusers' to_k/to_v have no bias), so attention returns a constant and no record
        information reaches the U-Net; no forward pass, no parameters. "empty_prompt" (the
        authors' code, the paper preset): the encoder's own output for the empty sentence, soft
        prompts included, as LDM's learned conditioning of "". (Stage 1's null context is the
        CLIP one, `namd.models.null_context`.)
        """
        device = self.device if device is None else device
        if self.null_mode == "empty_prompt":
            return self.empty_prompt_context().to(device).expand(batch_size, -1, -1)
        return torch.zeros(batch_size, self.n_tokens, self.dim, dtype=torch.float32, device=device)

    def empty_prompt_context(self) -> Tensor:
        """C (1, m, D) of the empty sentence; only a language-model encoder has one."""
        raise ValueError(f"diffusion.null_context = 'empty_prompt' needs text.encoder = llm, not "
                         f"{type(self).__name__}; use diffusion.null_context = zeros")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimiser should update (soft prompts, or the structured MLP)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _trainable_named(self) -> dict[str, nn.Parameter]:
        """Name -> trainable parameter."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Copies of the trainable parameters only (never the frozen language model)."""
        return {name: p.detach().clone().contiguous() for name, p in self._trainable_named().items()}

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load what `trainable_state_dict` saved; names and shapes must match exactly."""
        own = self._trainable_named()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"context encoder checkpoint does not match {type(self).__name__}: "
                             f"missing {missing}, unexpected {unexpected}")
        for name, param in own.items():
            value = state[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"context encoder checkpoint: {name} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(param.shape)} (check text.n_prompt_sets/"
                                 f"n_prompt_tokens and the model)")
            with torch.no_grad():
                param.copy_(value.to(device=param.device, dtype=param.dtype))

    def trainable_fingerprint(self) -> str:
        """A hash of the trainable values: it changes whenever an optimiser step changes them."""
        digest = hashlib.sha1()
        for name, p in sorted(self._trainable_named().items()):
            digest.update(name.encode())
            digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


class StandardizedContext(ContextEncoder):
    """Another encoder's C, standardised value by value: (C - mean) / std over training records.

    Beyond the paper (text.standardize). The statistics are fitted once (`fit`, with the initial
    soft prompts, before cond training) and then fixed, so the soft prompts still move C freely;
    they travel in `trainable_state_dict` under `standardize.*`. A zero null context stays zeros,
    which after standardisation is also the average patient. A spread below a tenth of the median
    spread is raised to it, so near-constant values are not blown up.
    """

    STATE = ("standardize.mean", "standardize.std")

    def __init__(self, inner: ContextEncoder) -> None:
        """Wrap `inner`; until `fit` (or a loaded state) the statistics are the identity."""
        super().__init__()
        self.inner = inner
        self.dim, self.n_tokens = inner.dim, inner.n_tokens
        self.register_buffer("mean", torch.zeros(inner.n_tokens, inner.dim), persistent=False)
        self.register_buffer("std", torch.ones(inner.n_tokens, inner.dim), persistent=False)

    @property
    def device(self) -> torch.device:
        """Where the wrapped encoder produces C."""
        return self.inner.device

    def cache_key(self, ehr: EHR) -> str:
        """The wrapped encoder's key."""
        return self.inner.cache_key(ehr)

    def forward(self, ehrs: Sequence[EHR]) -> Tensor:
        """Standardised C (B, m, D)."""
        return self._standardise(self.inner(ehrs))

    def _standardise(self, raw: Tensor) -> Tensor:
        """(C - mean) / std with the fitted statistics."""
        return (raw - self.mean.to(raw.device)) / self.std.to(raw.device)

    def empty_prompt_context(self) -> Tensor:
        """The wrapped encoder's empty-sentence C, standardised like every other C."""
        return self._standardise(self.inner.empty_prompt_context())

    def fit(self, ehrs: Sequence[EHR], batch_size: int = 64) -> dict[str, float]:
        """Fit mean and std on `ehrs` (no grad); returns summary numbers for the run's log."""
        if len(ehrs) < 2:
            raise ValueError(f"text.standardize needs at least 2 training records, got {len(ehrs)}")
        with torch.no_grad():
            raw = torch.cat([self.inner(ehrs[i:i + batch_size]).cpu()
                             for i in range(0, len(ehrs), batch_size)])
        spread = raw.std(0)
        self.mean.copy_(raw.mean(0).to(self.mean.device))
        self.std.copy_(spread.clamp_min(0.1 * float(spread.median()) + 1e-12).to(self.std.device))
        return {"records": len(ehrs), "mean_abs_value": float(raw.abs().mean()),
                "mean_between_record_std": float(spread.mean())}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The wrapped encoder's trainable tensors plus the fitted statistics."""
        state = super().trainable_state_dict()
        state.update(zip(self.STATE, (self.mean.detach().clone(), self.std.detach().clone()), strict=True))
        return state

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load the trainable tensors and the statistics (both must be present)."""
        missing = [k for k in self.STATE if k not in state]
        if missing:
            raise ValueError(f"context encoder checkpoint lacks {missing}: it was trained with "
                             f"text.standardize=false")
        super().load_trainable_state_dict({k: v for k, v in state.items() if k not in self.STATE})
        for name, key in zip(("mean", "std"), self.STATE, strict=True):
            buf = getattr(self, name)
            if tuple(state[key].shape) != tuple(buf.shape):
                raise ValueError(f"context encoder checkpoint: {key} has shape "
                                 f"{tuple(state[key].shape)}, expected {tuple(buf.shape)}")
            buf.copy_(state[key].to(buf.device, buf.dtype))

    def trainable_fingerprint(self) -> str:
        """Changes with the soft prompts and with the statistics (a fit or a load)."""
        digest = hashlib.sha1(super().trainable_fingerprint().encode())
        for buf in (self.mean, self.std):
            digest.update(buf.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


class ContextCache:
    """Each record's C computed once, without gradients, then reused (sampling, evaluation).

    At sampling time one patient's C serves all K samples and all DDIM steps; the cache also
    serves repeated passes over the same records. Records are keyed by `encoder.cache_key`
    (the report sentence for the LLM encoder) or by the `keys` the caller passes (a record id).
    If the trainable parameters change (a training step), the cache empties itself.
    """

    def __init__(self, encoder: ContextEncoder, batch_size: int = 64) -> None:
        """Wrap `encoder`; at most `batch_size` records go through it per forward pass."""
        if batch_size < 1:
            raise ValueError(f"ContextCache batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.batch_size = batch_size
        self._store: dict[str, Tensor] = {}
        self._fingerprint = encoder.trainable_fingerprint()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        """Number of distinct records whose C is stored."""
        return len(self._store)

    def clear(self) -> None:
        """Forget every stored C."""
        self._store.clear()

    def _check_fresh(self) -> None:
        """Drop stored contexts made with trainable values that have since changed."""
        now = self.encoder.trainable_fingerprint()
        if now != self._fingerprint:
            self._store.clear()
            self._fingerprint = now

    def __call__(self, ehrs: Sequence[EHR], keys: Sequence[str] | None = None) -> Tensor:
        """C for `ehrs` (B, m, D), computing only records not seen before (no grad)."""
        if keys is None:
            keys = [self.encoder.cache_key(e) for e in ehrs]
        elif len(keys) != len(ehrs):
            raise ValueError(f"ContextCache: {len(keys)} keys for {len(ehrs)} records")
        self._check_fresh()
        todo: dict[str, EHR] = {}
        for key, ehr in zip(keys, ehrs, strict=True):
            if key not in self._store and key not in todo:
                todo[key] = ehr
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        self._compute(list(todo.items()))
        if not keys:
            return self.encoder.null_context(0)
        return torch.stack([self._store[k] for k in keys])

    def _compute(self, items: list[tuple[str, EHR]]) -> None:
        """Run the encoder over new records in batches and store each C (m, D)."""
        starts = range(0, len(items), self.batch_size)
        bar = progress(starts, desc="contexts", unit="batch", disable=None if len(starts) > 1 else True)
        with torch.no_grad():
            for start in bar:
                chunk = items[start:start + self.batch_size]
                out = self.encoder([ehr for _, ehr in chunk])
                for (key, _), c in zip(chunk, out, strict=True):
                    self._store[key] = c
