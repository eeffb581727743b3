"""The conversation-level modules of MiSTER-E (stage 2): the per-modality context module, the cross-modal expert's
co-attention, the gate and the mixture of the experts; `modeling_mister_e.py` assembles them into
`MisterEForEmotionRecognition`."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .configuration_mister_e import EXPERT_MODALITIES, EXPERTS, MisterEConfig


def scatter_rows(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`values` for the True entries of the `(batch, utterances)` mask `rows`, in order, placed in a zero
    `(batch, utterances, dim)` tensor: the way back from `inputs[rows]`."""
    return values.new_zeros(*rows.shape, values.shape[-1]).masked_scatter(rows[..., None], values)


class _GRURecurrence(torch.autograd.Function):
    """One direction of one GRU layer over packed input projections `gi` `(N, 3H)` (rows of step t:
    `starts[t]:starts[t] + batch_sizes[t]`, the conversations still running), with `nn.GRU`'s equations.

    nn.GRU's CPU backward takes the recurrent weights' gradient one small product per step and accumulates it; here it
    is one product after the recurrence, and the gates' derivative factors are computed for every step at once."""

    @staticmethod
    def forward(ctx, gi, weight, bias, batch_sizes, starts):
        size = weight.shape[1]
        out = gi.new_empty(len(gi), size)
        gates = torch.empty_like(gi)  # r, z, n
        gh = torch.empty_like(gi)  # W_h h + b_h
        h = gi.new_zeros(batch_sizes[0], size)
        for start, b in zip(starts, batch_sizes):
            rows = slice(start, start + b)
            step, gate, g = torch.addmm(bias, h[:b], weight.t(), out=gh[rows]), gates[rows], gi[rows]
            torch.sigmoid(g[:, : 2 * size] + step[:, : 2 * size], out=gate[:, : 2 * size])
            torch.tanh(torch.addcmul(g[:, 2 * size :], gate[:, :size], step[:, 2 * size :]), out=gate[:, 2 * size :])
            h = torch.lerp(gate[:, 2 * size :], h[:b], gate[:, size : 2 * size], out=out[rows])
        ctx.save_for_backward(out, gates, gh, weight)
        ctx.batch_sizes, ctx.starts = batch_sizes, starts
        return out

    @staticmethod
    def backward(ctx, grad_out):
        out, gates, gh, weight = ctx.saved_tensors
        batch_sizes, starts, size = ctx.batch_sizes, ctx.starts, out.shape[1]
        previous = torch.cat([out.new_zeros(batch_sizes[0], size)]
                             + [out[start : start + b] for start, b in zip(starts, batch_sizes[1:])])
        r, z, n = gates.split(size, 1)
        # The pre-activations' gradients are the gradient of h_t times these factors.
        factor_n = (1 - z) * (1 - n * n)
        factors = torch.cat([factor_n * gh[:, 2 * size :] * r * (1 - r), (previous - n) * z * (1 - z), factor_n * r], 1)
        grad_h, grad_gh = torch.empty_like(out), torch.empty_like(gh)
        carry = out.new_zeros(batch_sizes[0], size)
        for start, b in zip(reversed(starts), reversed(batch_sizes)):
            rows = slice(start, start + b)
            dh = torch.add(grad_out[rows], carry[:b], out=grad_h[rows])
            step = torch.mul(dh[:, None], factors[rows].view(b, 3, size), out=grad_gh[rows].view(b, 3, size))
            torch.addmm(dh * z[rows], step.view(b, -1), weight, out=carry[:b])
        grad_gi = torch.cat([grad_gh[:, : 2 * size], grad_h * factor_n], 1)
        return grad_gi, grad_gh.t() @ previous, grad_gh.sum(0), None, None


def gru_packed(gru: nn.GRU, packed: PackedSequence) -> PackedSequence:
    """`gru(packed)[0]` (no initial state, no dropout between layers) through `_GRURecurrence`; the backward
    direction reads each conversation's rows in reverse order."""
    batch_sizes = packed.batch_sizes.tolist()
    starts = [0, *torch.tensor(batch_sizes[:-1]).cumsum(0).tolist()]
    lengths = (packed.batch_sizes[None] > torch.arange(batch_sizes[0])[:, None]).sum(1)  # longest first
    step, row = (torch.arange(len(batch_sizes))[:, None] < lengths).nonzero(as_tuple=True)
    start_of = torch.tensor(starts)
    reverse = torch.empty(len(step), dtype=torch.long)
    reverse[start_of[step] + row] = start_of[lengths[row] - 1 - step] + row
    hidden = packed.data
    for layer in range(gru.num_layers):
        outputs = []
        for suffix in (f"l{layer}", f"l{layer}_reverse")[: 1 + gru.bidirectional]:
            order = reverse if suffix.endswith("reverse") else slice(None)
            gi = F.linear(hidden, getattr(gru, f"weight_ih_{suffix}"), getattr(gru, f"bias_ih_{suffix}"))[order]
            weight, bias = getattr(gru, f"weight_hh_{suffix}"), getattr(gru, f"bias_hh_{suffix}")
            outputs.append(_GRURecurrence.apply(gi, weight, bias, batch_sizes, starts)[order])
        hidden = torch.cat(outputs, 1)
    return PackedSequence(hidden, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)


# A context convolution's kept low-precision kernel (`MisterEContextModule._kernel_matrix`), beside the module rather
# than on it: never in its state dict, copies or pickles, and gone with it.
_LOW_PRECISION_KERNELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class MisterEContextModule(nn.Module):
    """Convolutional-recurrent context over one modality's utterance sequence, with a linear skip and classifier.

    `C = sum_k ReLU(Conv_k(X))`, `H = GRU(C)`, `Z = H + Linear(X)`, `logits = Linear(Z)`. Padded and missing
    utterances must arrive as zero vectors: the convolutions then see exactly the zero padding a shorter batch gives,
    and the GRU is packed so that no state passes through padding.
    """

    def __init__(self, config: MisterEConfig, input_dim: int, modality: str):
        super().__init__()
        self.causal = config.causal
        settings = config.context_settings(modality)
        self.kernel_sizes = config.conv_kernel_sizes if settings["context_module"] in ("conv_gru", "conv") else []
        self.convs = nn.ModuleList(nn.Conv1d(input_dim, config.context_dim, k) for k in self.kernel_sizes)
        self.gru = None
        if settings["context_module"] in ("conv_gru", "gru"):
            self.gru = nn.GRU(
                input_size=config.context_dim if self.convs else input_dim,
                hidden_size=config.context_dim if self.causal else config.context_dim // 2,
                num_layers=settings["gru_layers"],
                batch_first=True,
                bidirectional=not self.causal,
            )
        self.skip = nn.Linear(input_dim, config.context_dim)
        self.classifier = nn.Linear(config.context_dim, config.num_labels)
        self.dropout = nn.Dropout(config.context_dropout)

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Every dense layer runs on the real utterances alone (`rows`): padding costs no arithmetic.
        rows = attention_mask.bool()
        hidden = real = inputs[rows]
        if self.convs:
            hidden = self.dropout(sum(F.relu(self._convolve(conv, inputs, rows)) for conv in self.convs))
        if self.gru is not None:
            lengths = rows.sum(1).clamp(min=1).cpu()
            packed = pack_padded_sequence(scatter_rows(hidden, rows), lengths, batch_first=True, enforce_sorted=False)
            states = self._recur(packed)[0]
            hidden = pad_packed_sequence(states, batch_first=True, total_length=inputs.shape[1])[0][rows]
        return scatter_rows(self.classifier(self.dropout(hidden) + self.skip(real)), rows)

    def _recur(self, inputs, state=None):
        """The GRU in its weights' precision even under autocast: in bfloat16 it leaves cuDNN's fast path on a GPU, and
        on a CPU its per-utterance steps cast their small operands back and forth (measured slower on both). Training
        on a CPU, a whole conversation batch goes through `gru_packed` (the same mathematics, a faster backward)."""
        weight = self.gru.weight_hh_l0
        with torch.autocast(weight.device.type, enabled=False):
            inputs = inputs.to(weight.dtype)
            if isinstance(inputs, PackedSequence) and torch.is_grad_enabled() and weight.device.type == "cpu":
                return gru_packed(self.gru, inputs), None
            return self.gru(inputs, None if state is None else state.to(weight.dtype))

    def _convolve(self, conv: nn.Conv1d, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`conv` at the real utterances only, as one matrix product: each row's window of `k` zero-padded inputs
        (`unfold`, laid out as the weight's `(in, k)`) times the weight viewed as `(out, in * k)`."""
        kernel_size = conv.kernel_size[0]
        padded = F.pad(inputs.transpose(1, 2), self._padding(kernel_size))
        windows = padded.unfold(2, kernel_size, 1).transpose(1, 2)[rows]
        return F.linear(windows.reshape(len(windows), -1), self._kernel_matrix(conv), conv.bias)

    def _kernel_matrix(self, conv: nn.Conv1d) -> torch.Tensor:
        """`conv`'s weight viewed as `(out, in * k)`. Autocast keeps a weight's low-precision copy for the rest of its
        region, but not a view's: inference under autocast would cast this view afresh at every forward (at paper size
        a fifth of a bfloat16 forward on a CPU). Without gradients the copy is kept in `_LOW_PRECISION_KERNELS`
        instead, the very values autocast would make, and made again once the weight changes: its version, or its
        memory (a weak reference to it: an address alone was matched by a later weight given the same memory)."""
        matrix = conv.weight.view(conv.out_channels, -1)
        device = matrix.device.type
        if torch.compiler.is_compiling():  # the cast is then part of the compiled graph, and no Python state is kept
            return matrix
        if torch.is_grad_enabled() or not torch.is_autocast_enabled(device):
            _LOW_PRECISION_KERNELS.pop(conv, None)
            return matrix
        key = (torch.get_autocast_dtype(device), conv.weight._version, StorageWeakRef(conv.weight.untyped_storage()))
        kept = _LOW_PRECISION_KERNELS.get(conv)
        if kept is None or kept[0] != key:
            kept = _LOW_PRECISION_KERNELS[conv] = (key, matrix.to(key[0]))
        return kept[1]

    def step(self, inputs: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        """Causal mode, one new utterance `(batch, dim)`: the last inputs feed the convolutions, the GRU carries on."""
        if state is None:
            history = max(self.kernel_sizes, default=1) - 1
            state = {"inputs": inputs.new_zeros(inputs.shape[0], history, inputs.shape[-1]), "gru": None}
        window = torch.cat([state["inputs"], inputs[:, None]], dim=1)
        hidden = inputs
        if self.convs:
            hidden = self.dropout(sum(
                F.relu(conv(window[:, -k:].transpose(1, 2)))[..., 0] for conv, k in zip(self.convs, self.kernel_sizes)
            ))
        gru_state = state["gru"]
        if self.gru is not None:
            output, gru_state = self._recur(hidden[:, None], gru_state)
            hidden = output[:, 0]
        return self.classifier(self.dropout(hidden) + self.skip(inputs)), {"inputs": window[:, 1:], "gru": gru_state}

    def _padding(self, kernel_size: int) -> tuple[int, int]:
        if self.causal:
            return kernel_size - 1, 0
        return (kernel_size - 1) // 2, kernel_size // 2


class MisterEAttention(nn.Module):
    """Multi-head attention narrower than its input (`attention_dim`), with key masks that may empty a row."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.num_heads = config.attention_heads
        self.dropout = config.attention_dropout
        self.causal = config.causal
        self.q_proj = nn.Linear(config.cross_modal_dim, config.attention_dim)
        self.k_proj = nn.Linear(config.cross_modal_dim, config.attention_dim)
        self.v_proj = nn.Linear(config.cross_modal_dim, config.attention_dim)
        self.out_proj = nn.Linear(config.attention_dim, config.cross_modal_dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor, key_mask: torch.Tensor):
        """`queries`, `keys`: `(real utterances, width)`, the True entries of `rows` `(batch, utterances)` in order;
        only the narrow projections are laid out by conversation for the dot products."""
        q, k, v = (self._heads(scatter_rows(projection(x), rows))
                   for projection, x in ((self.q_proj, queries), (self.k_proj, keys), (self.v_proj, keys)))
        allowed = key_mask[:, None, None, :]
        if self.causal:
            ones = torch.ones(rows.shape[1], rows.shape[1], dtype=torch.bool, device=keys.device)
            allowed = allowed & ones.tril()
        return self.out_proj(self._attend(q, k, v, allowed)[rows])

    def step(self, query, key, key_mask, cache):
        """One new position `(batch, 1, width)` against all earlier ones; `cache` holds their projected keys/values."""
        k, v, mask = self._heads(self.k_proj(key)), self._heads(self.v_proj(key)), key_mask
        if cache is not None:
            k, v, mask = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2), torch.cat([cache[2], mask], 1)
        return self.out_proj(self._attend(self._heads(self.q_proj(query)), k, v, mask[:, None, None, :])), (k, v, mask)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def _attend(self, q, k, v, allowed):
        # A query with no key to look at (a text-only conversation's speech side, say) gets a zero output.
        has_key = allowed.any(-1, keepdim=True)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed | ~has_key, dropout_p=self.dropout if self.training else 0.0
        )
        attended = (attended * has_key).transpose(1, 2)
        return attended.reshape(*attended.shape[:2], -1)


class MisterEAttentionSublayer(nn.Module):
    """Post-LayerNorm residual attention: `LayerNorm(x + Dropout(Attention(x, context)))`."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.attention = MisterEAttention(config)
        self.dropout = nn.Dropout(config.residual_dropout)
        self.layer_norm = nn.LayerNorm(config.cross_modal_dim, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, rows: torch.Tensor, context_mask: torch.Tensor):
        return self.layer_norm(hidden + self.dropout(self.attention(hidden, context, rows, context_mask)))

    def step(self, hidden, context, context_mask, cache):
        attended, cache = self.attention.step(hidden, context, context_mask, cache)
        return self.layer_norm(hidden + self.dropout(attended)), cache


class MisterECoAttentionLayer(nn.Module):
    """Cross-attention both ways in parallel, then self-attention within each modality."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.speech_cross = MisterEAttentionSublayer(config)
        self.text_cross = MisterEAttentionSublayer(config)
        self.speech_self = MisterEAttentionSublayer(config)
        self.text_self = MisterEAttentionSublayer(config)

    def forward(self, speech, text, rows, speech_mask, text_mask):
        speech, text = self.speech_cross(speech, text, rows, text_mask), self.text_cross(text, speech, rows, speech_mask)
        return self.speech_self(speech, speech, rows, speech_mask), self.text_self(text, text, rows, text_mask)

    def step(self, speech, text, speech_mask, text_mask, caches: dict):
        """The new position of each stream; `caches` (one per attention, updated in place) hold the earlier ones."""
        new_speech, caches["speech_cross"] = self.speech_cross.step(speech, text, text_mask, caches.get("speech_cross"))
        new_text, caches["text_cross"] = self.text_cross.step(text, speech, speech_mask, caches.get("text_cross"))
        new_speech, caches["speech_self"] = self.speech_self.step(new_speech, new_speech, speech_mask, caches.get("speech_self"))
        new_text, caches["text_self"] = self.text_self.step(new_text, new_text, text_mask, caches.get("text_self"))
        return new_speech, new_text


class MisterECrossModalExpert(nn.Module):
    """Co-attention over the raw speech and text sequences; returns logits and the `A_hat`, `T_hat` vectors."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        width = config.cross_modal_dim
        self.speech_proj = nn.Linear(config.expert_input_dim("speech"), width)
        self.text_proj = nn.Linear(config.expert_input_dim("text"), width)
        self.layers = nn.ModuleList(MisterECoAttentionLayer(config) for _ in range(config.coattention_layers))
        self.speech_skip = nn.Linear(config.expert_input_dim("speech"), width)
        self.text_skip = nn.Linear(config.expert_input_dim("text"), width)
        self.layer_norm = nn.LayerNorm(2 * width, eps=config.layer_norm_eps)
        self.classifier = nn.Sequential(
            nn.Linear(2 * width, config.fusion_hidden_size), nn.ReLU(), nn.Linear(config.fusion_hidden_size, config.num_labels)
        )

    def forward(self, speech_embeds, text_embeds, speech_mask, text_mask):
        # Both streams are kept as `(real utterances, width)` rows: padding costs no arithmetic.
        rows = speech_mask | text_mask
        speech_embeds, text_embeds = speech_embeds[rows], text_embeds[rows]
        speech, text = self.speech_proj(speech_embeds), self.text_proj(text_embeds)
        for layer in self.layers:
            speech, text = layer(speech, text, rows, speech_mask, text_mask)
        outputs = self._classify(speech, text, speech_embeds, text_embeds)
        return tuple(scatter_rows(output, rows) for output in outputs)

    def step(self, speech_embeds, text_embeds, speech_mask, text_mask, state: list | None):
        """Causal mode, one new utterance per conversation (`(batch, 1, dim)` inputs, `(batch, 1)` masks)."""
        # Fresh cache dicts: the layers update theirs in place, and the caller's state must stay as given (a step
        # retried, or branched, from one state gives one answer).
        state = [dict(caches) for caches in state] if state is not None else [{} for _ in self.layers]
        speech, text = self.speech_proj(speech_embeds), self.text_proj(text_embeds)
        for layer, caches in zip(self.layers, state):
            speech, text = layer.step(speech, text, speech_mask, text_mask, caches)
        return *self._classify(speech, text, speech_embeds, text_embeds), state

    def _classify(self, speech, text, speech_embeds, text_embeds):
        speech = speech + self.speech_skip(speech_embeds)
        text = text + self.text_skip(text_embeds)
        logits = self.classifier(self.layer_norm(torch.cat([text, speech], dim=-1)))
        return logits, speech, text


class MisterEGate(nn.Module):
    """Per-utterance softmax gate over the three experts' logits (`3C -> hidden -> ReLU -> 3`, temperature `tau`)."""

    def __init__(self, config: MisterEConfig):
        super().__init__()
        self.temperature = config.gate_temperature
        self.mlp = nn.Sequential(
            nn.Linear(len(EXPERTS) * config.num_labels, config.gate_hidden_size),
            nn.ReLU(),
            nn.Linear(config.gate_hidden_size, len(EXPERTS)),
        )

    def forward(self, expert_logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.mlp(expert_logits.flatten(-2)) / self.temperature, dim=-1)


def available_experts(has_speech: torch.Tensor, has_text: torch.Tensor, expert_mask) -> torch.Tensor:
    """Which experts can answer each utterance, `(..., len(EXPERTS))`: enabled in `expert_mask`, and given every
    modality they need."""
    present = {"speech": has_speech, "text": has_text}
    available = torch.stack([
        torch.stack([present[modality] for modality in EXPERT_MODALITIES[expert]]).all(0) for expert in EXPERTS
    ], dim=-1)
    return available & torch.tensor(expert_mask, device=available.device)


def answerable(modality_mask: torch.Tensor, expert_mask) -> torch.Tensor:
    """Whether some enabled expert can answer each utterance of a `(..., 2)` (speech, text) modality mask: where none
    can, the gate has nothing to weigh and a prediction would be arbitrary (the pipeline and evaluation refuse it)."""
    mask = modality_mask.bool()
    return available_experts(mask[..., 0], mask[..., 1], expert_mask).any(-1)


def weigh_experts(mode: str, gate: MisterEGate | None, expert_logits: torch.Tensor, available: torch.Tensor):
    """Each expert's weight per utterance (`config.gate_mode`: the learned `gate`, the plain mean, or one named
    expert), zero where it is unavailable; rows with no available expert are zero."""
    if mode == "learned":
        prior = gate(expert_logits)
    elif mode == "mean":
        prior = torch.ones_like(available, dtype=expert_logits.dtype)
    else:
        prior = F.one_hot(torch.tensor(EXPERTS.index(mode)), len(EXPERTS)).to(expert_logits)
    weights = prior * available
    total = weights.sum(-1, keepdim=True)
    # A named single expert that is unavailable here falls back to the mean of the available ones.
    fallback = available / available.sum(-1, keepdim=True).clamp(min=1)
    return torch.where(total > 0, weights / total.clamp(min=torch.finfo(total.dtype).tiny), fallback)


def mix_experts(space: str, weights: torch.Tensor, expert_logits: torch.Tensor) -> torch.Tensor:
    """The gated mixture's logits (`config.mixture_space`): the weighted raw logits (the paper's `"logits"`), or the
    log of the weighted probabilities (`"probabilities"`)."""
    if space == "logits":
        return (weights[..., None] * expert_logits).sum(-2)
    probabilities = (weights[..., None] * expert_logits.softmax(-1)).sum(-2)
    return probabilities.clamp(min=torch.finfo(probabilities.dtype).tiny).log()
