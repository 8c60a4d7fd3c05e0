"""Per-example gradient features of a proxy model, projected for clustering (paper section 4.1, App. A).

Role: the feature step of repartition (*features* -> clustering -> domains -> impact -> schedule). For
example x_i the feature is the loss gradient g_i = grad l(theta', x_i) of a proxy model restricted to the
linear layers of its last blocks, optionally sparsified to its top-k magnitudes, then reduced by a
Johnson-Lindenstrauss random projection g~_i = R^T g_i (eq. 5) to a few thousand dimensions.

Two ways to get there:

* `exact_gradient_features`, the reference: one `torch.autograd.grad` per example, the flattened
  gradient, optional top-k, then the dense random-sign projection of Appendix A (`RademacherProjection`).
* `FactoredGradientFeatures`, the default: one batched forward/backward. A linear layer y = x W^T has the
  per-example gradient G_i = sum_t delta_{i,t} x_{i,t}^T ([out, in]); with two small Gaussian matrices
  P_out [r_o, out], P_in [r_i, in] its Kronecker-structured projection is
  (P_out (x) P_in) vec(G_i) = P_out G_i P_in^T = sum_t (P_out delta_{i,t}) (P_in x_{i,t})^T,
  so it is built from the layer's forward activations x and backward output-gradients delta, projected on
  each side before the product: the [out, in] gradient is never formed. The concatenated [r_o, r_i]
  blocks then go through a second JL projection to `proj_dim`, a sparse one (`SparseJLProjection`, one
  signed bucket per coordinate, regenerated from the seed), which costs O(blocks) per example and stores
  nothing whatever the number of layers. Only output-gradients are requested from autograd, so no
  weight gradient is computed either.

Both take `normalise_layers`: each matrix's part of a row's gradient scaled to unit norm before the final
projection (`normalise_blocks`; repartition's default, a departure from the paper's plain concatenation).

The per-example loss is the mean token cross-entropy over that example's supervised tokens (labels !=
IGNORE_INDEX: the response tokens of an SFT row, as in training).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from ..utils import IGNORE_INDEX
from .impact import SparseJLProjection


def row_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed next-token cross-entropy over the supervised tokens, and their number.

    Args:
        logits: [B, T, V] next-token logits.
        labels: [B, T] token ids, IGNORE_INDEX where not supervised (shifted inside, as HF causal LMs do).

    Returns:
        [B] float32 loss sums (0 for a row without supervised tokens) and [B] supervised-token counts.
    """
    shift_labels = labels[..., 1:]
    per_token = F.cross_entropy(
        logits[..., :-1, :].flatten(0, 1).float(),
        shift_labels.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(shift_labels)  # [B, T-1]
    return per_token.sum(dim=-1), (shift_labels != IGNORE_INDEX).sum(dim=-1)


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example mean cross-entropy over supervised tokens ([B] float32; 0 for a row without any).

    Args: as `row_losses`.
    """
    sums, counts = row_losses(logits, labels)
    return sums / counts.clamp_min(1)


def response_token_fit(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> dict[str, float]:
    """How well a proxy predicts the supervised tokens of some rows, against their unigram entropy.

    A gradient feature is only as informative as the proxy: an untrained or mismatched model predicts the
    response tokens no better than their frequencies, and its gradients barely tell kinds of text apart.
    Both figures are in nats per supervised token over all `batches` ((input_ids, attention_mask, labels),
    labels IGNORE_INDEX where not supervised, shifted as in `example_losses`):

    * `loss`: the proxy's mean cross-entropy;
    * `unigram_entropy`: the entropy of the same tokens' empirical distribution, i.e. the loss of the best
      context-free model of exactly these tokens (a proxy that does not beat it has learnt no context);
    * `tokens`: how many tokens were scored.
    """
    total, tokens, targets = 0.0, 0, []
    with torch.no_grad():
        for input_ids, attention_mask, labels in batches:
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            sums, counts = row_losses(logits, labels)
            total += float(sums.double().sum())
            tokens += int(counts.sum())
            shift = labels[:, 1:]
            targets.append(shift[shift != IGNORE_INDEX].cpu())
    if tokens == 0:
        return {"loss": float("nan"), "unigram_entropy": float("nan"), "tokens": 0}
    _, freq = torch.unique(torch.cat(targets), return_counts=True)
    p = freq.double() / tokens
    return {"loss": total / tokens, "unigram_entropy": float(-(p * p.log()).sum()), "tokens": tokens}


def topk_sparsify(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the ceil(fraction * h) largest-magnitude entries of each row (the paper's top-k step).

    Args:
        x: [B, h]. fraction: in (0, 1]; 0 or 1 returns `x` unchanged.

    Returns:
        [B, h] with all other entries set to 0.
    """
    if fraction <= 0 or fraction >= 1:
        return x
    k = max(1, math.ceil(fraction * x.shape[-1]))
    idx = x.abs().topk(k, dim=-1).indices
    return torch.zeros_like(x).scatter_(-1, idx, x.gather(-1, idx))


class RademacherProjection:
    """Dense Johnson-Lindenstrauss map R^T: [.., h] -> [.., s] with +-1/sqrt(s) entries (paper App. A).

    Appendix A draws +-1/sqrt(t) signs and normalises columns; that only rescales every feature by the
    same constant, which spherical k-means and cosine similarities ignore. Scaling by 1/sqrt(s) makes
    E|R^T x|^2 = |x|^2. Rows of R are generated in fixed chunks from (seed, chunk), so the matrix is
    reproducible without being stored; it is cached when it is at most `cache_bytes`.
    """

    CHUNK = 4096

    def __init__(self, in_dim: int, out_dim: int, seed: int, *, cache_bytes: int = 256 << 20):
        if in_dim <= 0 or out_dim <= 0:
            raise ValueError(f"projection dims must be positive, got {in_dim} -> {out_dim}.")
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed
        self._cache = in_dim * out_dim * 4 <= cache_bytes
        self._matrix: torch.Tensor | None = None

    def _chunk(self, index: int, device: torch.device) -> torch.Tensor:
        rows = min(self.CHUNK, self.in_dim - index * self.CHUNK)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        n = rows * self.out_dim
        # one random byte gives 8 signs: 8x fewer generator draws than one draw per entry
        packed = torch.randint(0, 256, ((n + 7) // 8,), generator=g, dtype=torch.uint8)
        bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1
        signs = bits.flatten()[:n].view(rows, self.out_dim).float().mul_(2).sub_(1)
        return signs.div_(math.sqrt(self.out_dim)).to(device)

    def matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[h, s] the full matrix R (cached if small)."""
        device = torch.device(device)
        if self._matrix is not None:
            return self._matrix.to(device)
        chunks = math.ceil(self.in_dim / self.CHUNK)
        full = torch.cat([self._chunk(i, device) for i in range(chunks)])
        if self._cache:
            self._matrix = full
        return full

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, h] -> [B, s] float32."""
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected {self.in_dim} input dims, got {x.shape[-1]}.")
        x = x.float()
        if self._cache:
            return x @ self.matrix(x.device)
        out = torch.zeros(*x.shape[:-1], self.out_dim, device=x.device)
        for i in range(math.ceil(self.in_dim / self.CHUNK)):
            out += x[..., i * self.CHUNK : (i + 1) * self.CHUNK] @ self._chunk(i, x.device)
        return out


def _orthogonal_rows(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """[rows, cols] random orthonormal rows scaled by sqrt(cols / rows), so E|Px|^2 = |x|^2.

    Orthogonal rows (the paper's "randomly orthogonal matrices", section 4.1) distort less than i.i.d.
    Gaussian ones, and at rows == cols the map is an exact isometry.
    """
    q, r = torch.linalg.qr(torch.randn(cols, rows, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]  # a unique, uniformly distributed Q
    return (q.T * math.sqrt(cols / rows)).float()


class KroneckerProjection:
    """Per linear layer l, random P_out [r_o, out] and P_in [r_i, in] with orthonormal scaled rows.

    Layer l's gradient G [out, in] maps to P_out G P_in^T [r_o, r_i], i.e. (P_out (x) P_in) vec(G) with a
    row-major vec. r_o = min(factor_dim, out), r_i = min(factor_dim, in).
    """

    def __init__(self, shapes: Sequence[tuple[int, int]], factor_dim: int, seed: int):
        if factor_dim <= 0:
            raise ValueError(f"factor_dim must be positive, got {factor_dim}.")
        self.shapes = [tuple(s) for s in shapes]
        self.p_out: list[torch.Tensor] = []
        self.p_in: list[torch.Tensor] = []
        for layer, (out_f, in_f) in enumerate(self.shapes):
            g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * (layer + 1))
            r_o, r_i = min(factor_dim, out_f), min(factor_dim, in_f)
            self.p_out.append(_orthogonal_rows(r_o, out_f, g))
            self.p_in.append(_orthogonal_rows(r_i, in_f, g))
        self.block_dims = [po.shape[0] * pi.shape[0] for po, pi in zip(self.p_out, self.p_in, strict=True)]
        self.dim = sum(self.block_dims)

    def to(self, device: torch.device) -> KroneckerProjection:
        self.p_out = [p.to(device) for p in self.p_out]
        self.p_in = [p.to(device) for p in self.p_in]
        return self

    def from_activations(self, layer: int, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Projected per-example gradient of one layer from its inputs and output-gradients.

        Args:
            x: [B, T, in] layer inputs. delta: [B, T, out] d loss_i / d y (0 on padding).

        Returns:
            [B, r_o * r_i] = flatten(sum_t (P_out delta_t)(P_in x_t)^T).
        """
        a = x.float() @ self.p_in[layer].T  # [B, T, r_i]
        d = delta.float() @ self.p_out[layer].T  # [B, T, r_o]
        return torch.bmm(d.transpose(1, 2), a).flatten(1)

    def from_gradient(self, layer: int, grad: torch.Tensor) -> torch.Tensor:
        """grad: [B, out, in] per-example gradients -> [B, r_o * r_i] = flatten(P_out G P_in^T)."""
        return (self.p_out[layer] @ grad.float() @ self.p_in[layer].T).flatten(1)

    def kron_matrix(self, layer: int) -> torch.Tensor:
        """[r_o * r_i, out * in] the explicit Kronecker matrix (tests only: it is large)."""
        return torch.kron(self.p_out[layer], self.p_in[layer])


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The longest `ModuleList` of identically typed modules: the decoder layers of any HF causal LM."""
    best: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            kinds = {type(m) for m in module}
            if len(kinds) == 1:
                best = list(module)
    return best


def full_shape(param: torch.Tensor) -> tuple[int, ...]:
    """A parameter's logical shape (DeepSpeed ZeRO-3 leaves an empty tensor and keeps it in `ds_shape`)."""
    return tuple(getattr(param, "ds_shape", param.shape))


def last_block_matrices(
    model: torch.nn.Module,
    blocks: Sequence[torch.nn.Module],
    layers_fraction: float,
    *,
    trainable_only: bool = False,
    include_lm_head: bool = False,
) -> list[tuple[str, torch.nn.Parameter]]:
    """The matrices of the last ceil(layers_fraction * len(blocks)) blocks (at least one), in model order.

    The one layer selection of the package: the impact probe (trainable matrices, optionally `lm_head`)
    and repartition's gradient features (every matrix of the proxy). A matrix is a parameter of logical
    rank >= 2 (`full_shape`: ZeRO-3 shards included). "Last 10%" is taken by block, not by parameter tensor
    (the paper's reference code), so `lm_head` is never part of it whatever the weight tying; with
    `include_lm_head` the output embedding is added unless a chosen block already holds it.

    Raises:
        ValueError: if there are no blocks or no (trainable) matrix in the chosen ones.
    """
    if not blocks:
        raise ValueError("Cannot find the transformer blocks of the model (no ModuleList of layers).")
    count = max(1, math.ceil(layers_fraction * len(blocks)))
    chosen = {id(p) for block in blocks[-count:] for p in block.parameters()}
    selected = [
        (name, p)
        for name, p in model.named_parameters()
        if id(p) in chosen and (p.requires_grad or not trainable_only) and len(full_shape(p)) >= 2
    ]
    if include_lm_head:
        head = getattr(model, "get_output_embeddings", lambda: None)()
        if (
            head is not None
            and (head.weight.requires_grad or not trainable_only)
            and id(head.weight) not in chosen
        ):
            selected.append(("lm_head.weight", head.weight))
    if not selected:
        kind = "trainable matrix" if trainable_only else "weight matrix"
        raise ValueError(f"No {kind} in the last {count} of {len(blocks)} transformer blocks.")
    return selected


def linear_modules_for(
    model: torch.nn.Module, params: Sequence[tuple[str, torch.nn.Parameter]]
) -> list[torch.nn.Linear]:
    """The `nn.Linear` owning each selected weight, in the order of `params`.

    Raises:
        ValueError: naming the selected tensors that are not the weight of an `nn.Linear`.
    """
    owners = {id(m.weight): m for m in model.modules() if isinstance(m, torch.nn.Linear)}
    missing = [name for name, p in params if id(p) not in owners]
    if missing:
        raise ValueError(
            "The factored feature path needs every selected matrix to be an `nn.Linear` weight; these are "
            f"not: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. Use `dids_features: exact` "
            "for this model."
        )
    return [owners[id(p)] for _, p in params]


class FactoredGradientFeatures:
    """Batched per-example gradient features of selected linear layers, never forming a gradient.

    The model's parameters must all have `requires_grad=False` (the caller freezes the proxy): autograd
    then records the graph only from the first selected layer on, and only output-gradients are computed.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        linears: Sequence[torch.nn.Linear],
        *,
        factor_dim: int,
        proj_dim: int,
        seed: int,
        topk_fraction: float = 0.0,
        normalise_layers: bool = False,
    ):
        self.model = model
        self.normalise_layers = normalise_layers
        self.linears = list(linears)
        self.kron = KroneckerProjection(
            [(m.out_features, m.in_features) for m in self.linears], factor_dim, seed
        )
        self.jl = SparseJLProjection(proj_dim, seed + 1)
        self.topk_fraction = topk_fraction
        self._device: torch.device | None = None

    def block_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """[B, sum_l r_o r_i] concatenated Kronecker-projected per-example gradients (before the JL step)."""
        device = input_ids.device
        if self._device != device:
            self.kron.to(device)
            self._device = device
        by_module: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        calls = [0]

        def hook(module, inputs, output):
            if not output.requires_grad:
                output.requires_grad_(True)  # a leaf: autograd starts here
            by_module[id(module)] = (inputs[0].detach(), output)
            calls[0] += 1

        handles = [m.register_forward_hook(hook) for m in self.linears]
        try:
            with torch.enable_grad():
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
                losses = example_losses(logits, labels)
                if calls[0] != len(self.linears) or len(by_module) != len(self.linears):
                    raise RuntimeError(
                        f"expected one call per selected layer, got {calls[0]} calls for {len(self.linears)} "
                        "layers (a layer called twice per forward is not supported by the factored path)."
                    )
                captured = [by_module[id(m)] for m in self.linears]
                # examples do not interact, so d(sum_i l_i)/d y_i = d l_i / d y_i
                deltas = torch.autograd.grad(losses.sum(), [out for _, out in captured], allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
        deltas = [
            torch.zeros_like(out) if d is None else d for (_, out), d in zip(captured, deltas, strict=True)
        ]
        if self.topk_fraction <= 0:
            return torch.cat(
                [
                    self.kron.from_activations(i, x, d)
                    for i, ((x, _), d) in enumerate(zip(captured, deltas, strict=True))
                ],
                dim=1,
            )
        # top-k needs the gradient coordinates: form the per-example gradients of the selected layers
        grads = [
            torch.bmm(d.float().transpose(1, 2), x.float())
            for (x, _), d in zip(captured, deltas, strict=True)
        ]
        shapes = [g.shape[1:] for g in grads]
        flat = topk_sparsify(torch.cat([g.flatten(1) for g in grads], dim=1), self.topk_fraction)
        sizes = [s[0] * s[1] for s in shapes]
        return torch.cat(
            [
                self.kron.from_gradient(i, part.view(-1, *shape))
                for i, (part, shape) in enumerate(zip(flat.split(sizes, dim=1), shapes, strict=True))
            ],
            dim=1,
        )

    def __call__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """[B, proj_dim] features of a right-padded batch (input_ids, attention_mask, labels: [B, T]); with
        `normalise_layers`, each layer's block scaled to unit norm per row first (`normalise_blocks`)."""
        blocks = self.block_features(input_ids, attention_mask, labels)
        if self.normalise_layers:
            blocks = normalise_blocks(blocks, self.kron.block_dims)
        return self.jl.project([blocks]).float()


def exact_example_gradients(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Reference per-example gradients: one `autograd.grad` per example, unpadded.

    Args:
        params: the selected tensors (must require grad). input_ids, attention_mask, labels: [B, T].

    Returns:
        [B, h] flattened gradients of each example's mean supervised-token loss, h = sum of numels.
    """
    rows = []
    for i in range(input_ids.shape[0]):
        keep = attention_mask[i].bool()
        ids, lab = input_ids[i, keep][None], labels[i, keep][None]
        if (lab[:, 1:] != IGNORE_INDEX).sum() == 0:
            rows.append(torch.zeros(sum(p.numel() for p in params), device=input_ids.device))
            continue
        with torch.enable_grad():
            loss = example_losses(model(input_ids=ids).logits, lab)[0]
            grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).float().flatten()
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def exact_gradient_features(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    projection: RademacherProjection,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    *,
    topk_fraction: float = 0.0,
    normalise_layers: bool = False,
) -> torch.Tensor:
    """[B, s] the paper's features: exact per-example gradient, top-k (if > 0), dense JL projection; with
    `normalise_layers`, each parameter's part scaled to unit norm per row before the projection."""
    grads = topk_sparsify(
        exact_example_gradients(model, params, input_ids, attention_mask, labels), topk_fraction
    )
    if normalise_layers:
        grads = normalise_blocks(grads, [p.numel() for p in params])
    return projection(grads)


def normalise_blocks(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """[B, sum(sizes)] with each consecutive block of `sizes` columns divided by its L2 norm in every row (a
    zero block stays zero). Concatenated gradients of several matrices compare by the largest matrices'
    directions alone: on SmolLM2's last three blocks the last MLP's gradients are 2-13x the others' and
    carry least of what separates kinds of text (docs/repartition.md, "Each matrix an equal say")."""
    eps = torch.finfo(x.dtype).tiny
    return torch.cat([F.normalize(p, dim=-1, eps=eps) for p in x.split(list(sizes), dim=-1)], dim=-1)


def mean_pooled_embeddings(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[B, H] sentence embeddings: the last hidden states averaged over non-padding tokens (DIDS-GC)."""
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[-1].float()  # [B, T, H]
    mask = attention_mask[..., None].float()
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
