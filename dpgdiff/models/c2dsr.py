"""C2DSR baseline (Cao et al., "Contrastive Cross-Domain Sequential Recommendation", CIKM 2022, arXiv 2304.03891).

Written from the paper, with the official code (github.com/cjx96/C2DSR, C2DSR_src/) as the reference for what the
paper leaves out; no code is copied. Internal ids as everywhere here: PAD 0, X items 1..Nx, Y items Nx+1..Nx+Ny.

Model (the paper's method section: graph neural network, sequential attentive encoders, training objectives;
equation numbers are not cited, as the full paper text was not at hand, and the formulas below were checked
against the official code instead):
    graphs      G_c over both domains' items, G_x / G_y over one domain's: an edge i -> j for every time the item j
                directly follows i in a training sequence (G_x, G_y: in its one-domain subsequence), weighted by the
                count and row-normalised (official utils/GraphMaker.py: duplicates add up, no self loops are added)
    propagation Ẽ = (E + Σ_l E_l) / (L + 1), E_l = A·dropout(E_{l-1}) + b_l (official model/GNN.py GCNLayer: its
                GraphConvolution never multiplies by its weight matrix, so none is built here); L = c2dsr.gnn_layers
    embedding   v(i) = (Ẽ[i] + E[i])·sqrt(d), for the tables (E_c, G_c), (E_x, G_x), (E_y, G_y)
    encoders    three SASRec encoders with absolute positions (1 = the oldest item): Enc_c over the mixed history s_c
                (table c), Enc_x over s_x (table x), Enc_y over s_y (table y); model.n_c_layers blocks each
    scores      for target domain d: W_d·(u_c + u_d) + b_d, with u_c the last state of Enc_c and u_d the last state of
                Enc_d (official trainer.py test_batch: seqs_fea[:, -1] + x_seqs_fea[X_last]); W_d, b_d a linear
                output layer per domain (official lin_X / lin_Y), not the item tables
    L_pred      CE(W_d·u_c + b_d) + CE(W_d·(u_c + u_d) + b_d) over the target domain's items (official x_share_loss
                + x_loss, y likewise), weighted by loss.domain_loss_norm (official: global_mean)
    L_cl        the contrastive infomax: a bilinear discriminator D_x scores (mean of Enc_c's states at the Y positions
                of s_c, mean of Enc_x's states) as positive and the same with s_c's X items replaced by random X items
                as negative, with BCE; D_y the other way round (official trainer.py train_batch: x_mi_loss, y_mi_loss)
    total       λ·L_pred + (1 - λ)·L_cl, λ = c2dsr.lambda_pred (official --lambda 0.7)
Defaults of configs/c2dsr.yaml from the official train_rec.py: d = 256, 2 blocks, 1 head, dropout 0.2 (also the
GNN's), 1 GNN layer, λ = 0.7, Adam lr 1e-3 with betas (0.9, 0.98) and no weight decay (its --weight_decay is
never passed to the optimiser), batch 256, 100 epochs, validation every 5, nn.Embedding's N(0, 1) init.

The graphs are built from `dataset.train_sequences` only, by `transition_graphs`, called in `build_model` as the
ItemCF map of DPG-Diff is: validation and test targets never enter them (tests/test_c2dsr.py). They travel with
the weights as buffers (`ItemGraph`), so a checkpoint scores without the training data.

Departures, each for the harness's one example = (history, next item) training and scoring:
- Training reads one (history, target) example at a time, the target's loss at the history's last position;
  the official code trains each sequence at its last 10 positions at once. train.mode=prefix gives every position
  of every training sequence as an example (with >= 1 item of each domain before it), the same supervision.
- u_d is Enc_d's last state over the compact subsequence s_d; the official code runs Enc_d over the mixed-length
  sequence with the other domain's positions as padding (zeroed, but visible to its attention). Here padding is
  masked out of every attention (the shared `CausalTransformer`: pre-LN blocks with a d-wide GELU FFN; the official
  blocks are SASRec-pytorch's, with a d-wide ReLU FFN). A history without items of d has u_d = 0.
- The infomax pools over all X (Y) positions of the example's history, and its corrupted histories are drawn anew
  at every step (the official ones once, when the data loads); rows whose history lacks either domain are left out
  of L_cl. The official output layers' extra PAD logit (lin_PAD) is not built: no target is PAD.
- model.item_bias picks how the output layers' bias (always there, as in the official nn.Linear) starts: none =
  nn.Linear's default, zero, or popularity (log-popularity, the lever every model here has).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dpgdiff.config import Config
from dpgdiff.data.dataset import DOMAIN_X, DOMAIN_Y, ItemSpace
from dpgdiff.models.base import Recommender
from dpgdiff.models.encoder import positions, split_domains, trim_padding
from dpgdiff.models.layers import CausalTransformer, Dropout, dropout
from dpgdiff.models.losses import domain_cross_entropy

Edges = tuple[np.ndarray, np.ndarray]  # (index int64 (2, nnz) sorted by row then column, weight float32 (nnz,))


def transition_edges(sequences: Sequence[np.ndarray], n_nodes: int) -> Edges:
    """Row-normalised transition counts of 0-based node sequences: weight(i -> j) = #(i then j) / #(i then any).

    sequences: int arrays of node ids in 0..n_nodes-1, time order. Returns the graph's COO form, coalesced."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if lengths.sum() == 0:
        return np.zeros((2, 0), np.int64), np.zeros(0, np.float32)
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
    seq_of = np.repeat(np.arange(len(lengths)), lengths)
    pair = seq_of[:-1] == seq_of[1:]  # consecutive positions of the same sequence
    src, dst = flat[:-1][pair], flat[1:][pair]
    if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n_nodes):
        raise ValueError(f"transition_edges: node ids outside 0..{n_nodes - 1}")
    keys, counts = np.unique(src * n_nodes + dst, return_counts=True)  # sorted: row-major and unique
    rows, cols = keys // n_nodes, keys % n_nodes
    out_degree = np.bincount(rows, weights=counts, minlength=n_nodes)
    return np.stack([rows, cols]), (counts / out_degree[rows]).astype(np.float32)


def transition_graphs(sequences: Sequence[np.ndarray], items: ItemSpace) -> dict[str, Edges]:
    """C2DSR's graphs from training sequences of internal ids: "c" over every item (node = id - 1), "x" / "y" over
    one domain's items (node = local index) with edges between consecutive items of its subsequence."""
    graphs = {"c": transition_edges([np.asarray(s, np.int64) - 1 for s in sequences],
                                    items.n_items_x + items.n_items_y)}
    for name, domain in (("x", DOMAIN_X), ("y", DOMAIN_Y)):
        subsequences = []
        for s in sequences:
            s = np.asarray(s, np.int64)
            subsequences.append(items.to_local(s[items.domain_of(s) == domain], domain))
        graphs[name] = transition_edges(subsequences, items.n_items(domain))
    return graphs


class ItemGraph(nn.Module):
    """A row-normalised adjacency A (n, n) kept as buffers, so that it is saved and loaded with the weights.

    A model loaded from a checkpoint is built with an empty graph; loading the state dict takes the saved one,
    whatever its number of edges."""

    def __init__(self, n_nodes: int, edges: Optional[Edges] = None) -> None:
        super().__init__()
        self.n_nodes = n_nodes
        index, weight = edges if edges is not None else (np.zeros((2, 0), np.int64), np.zeros(0, np.float32))
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long))
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("index", "weight"):
            saved = state_dict.get(prefix + name)
            if saved is not None:  # the saved graph's size, then the usual copy
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def adjacency(self) -> torch.Tensor:
        """A as a sparse COO tensor (n, n) on the buffers' device (the edges are stored coalesced)."""
        return torch.sparse_coo_tensor(self.index, self.weight, (self.n_nodes, self.n_nodes), is_coalesced=True,
                                       check_invariants=False)


class GraphPropagation(nn.Module):
    """Ẽ = (E + Σ_l E_l) / (L + 1), E_l = A·dropout(E_{l-1}) + b_l (official GCNLayer; module docstring)."""

    def __init__(self, dim: int, n_layers: int, p: float) -> None:
        super().__init__()
        self.p = p
        bound = 1.0 / math.sqrt(dim)  # the official GraphConvolution's uniform bias init
        self.biases = nn.Parameter(torch.empty(n_layers, dim).uniform_(-bound, bound))

    def forward(self, table: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """table (n, d) -> (n, d)."""
        total, layer = table, table
        for bias in self.biases:
            layer = torch.sparse.mm(adjacency, dropout(layer, self.p, self.training)) + bias
            total = total + layer
        return total / (len(self.biases) + 1)


class SequenceEncoder(nn.Module):
    """C2DSR's attentive encoder: item vectors + absolute positions, embedding dropout, causal blocks, final LN."""

    def __init__(self, dim: int, max_len: int, n_layers: int, n_heads: int, dropout_p: float, emb_dropout: float,
                 init_std: float) -> None:
        super().__init__()
        self.pos = nn.Embedding(max_len + 1, dim, padding_idx=0)
        with torch.no_grad():
            self.pos.weight.normal_(0.0, init_std)  # as the items (official: both nn.Embedding's N(0, 1))
            self.pos.weight[0].zero_()
        self.drop = Dropout(emb_dropout)
        self.transformer = CausalTransformer(dim, n_layers, n_heads, dropout_p, ffn_width=1)  # official: d-wide

    def forward(self, vectors: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """vectors (B, L, d) item vectors (0 at padding), valid (B, L) -> states (B, L, d)."""
        h = self.drop(vectors + self.pos(positions(valid, "absolute")))
        states, _ = self.transformer(h * valid.unsqueeze(-1).to(h.dtype), valid)
        return states


def masked_mean(states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of states (B, L, d) over the positions where keep (B, L) -> (B, d); 0 for a row that keeps none."""
    w = keep.unsqueeze(-1).to(states.dtype)
    return (states * w).sum(1) / w.sum(1).clamp_min(1.0)


class C2DSR(Recommender):
    """C2DSR (module docstring) behind the Recommender interface. graphs: `transition_graphs(...)`, or None for a
    model whose weights (the graphs among them) come from a checkpoint."""

    def __init__(self, config: Config, items: ItemSpace, max_len: int,
                 graphs: Optional[dict[str, Edges]] = None) -> None:
        super().__init__()
        m, c = config.model, config.c2dsr
        self.config = config
        self.items = items
        self.dim = m.dim
        nx, ny = items.n_items_x, items.n_items_y
        sizes = {"c": nx + ny, "x": nx, "y": ny}
        graphs = graphs or {}
        self.tables = nn.ParameterDict({k: nn.Parameter(torch.randn(n, m.dim) * m.item_init_std)
                                        for k, n in sizes.items()})
        self.graphs = nn.ModuleDict({k: ItemGraph(n, graphs.get(k)) for k, n in sizes.items()})
        self.propagate = nn.ModuleDict({k: GraphPropagation(m.dim, c.gnn_layers, m.dropout) for k in sizes})
        self.encoders = nn.ModuleDict({k: SequenceEncoder(m.dim, max_len, m.n_c_layers, m.n_heads, m.dropout,
                                                          m.emb_dropout, m.item_init_std) for k in sizes})
        self.out = nn.ModuleList([nn.Linear(m.dim, nx), nn.Linear(m.dim, ny)])  # W_d, b_d per domain
        if m.item_bias == "zero":
            for layer in self.out:
                nn.init.zeros_(layer.bias)
        self.discriminators = nn.ModuleList([nn.Bilinear(m.dim, m.dim, 1), nn.Bilinear(m.dim, m.dim, 1)])
        for disc in self.discriminators:  # official Discriminator.weights_init
            nn.init.xavier_uniform_(disc.weight)
            nn.init.zeros_(disc.bias)

    def bias(self, domain: int) -> Optional[torch.Tensor]:
        """b_d (n_items(domain),): the output layer's bias (C2DSR always has one)."""
        return self.out[domain].bias

    def item_vectors(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """Per table, the tensors whose rows sum to v = (Ẽ + E)·sqrt(d) (module docstring): (E, Ẽ), or (E,) without
        a GNN (gnn_layers = 0: v = E·sqrt(d)). The sum and the scale are taken after `lookup` gathers the rows: on
        the whole tables they were a large part of a step's time."""
        return {k: (table, self.propagate[k](table, self.graphs[k].adjacency()))
                if len(self.propagate[k].biases) else (table,) for k, table in self.tables.items()}

    def lookup(self, vectors: tuple[torch.Tensor, ...], ids: torch.Tensor, offset: int):
        """v for internal ids (B, L), tables whose row 0 is id `offset`; PAD (0) -> zeros. -> (h (B, L, d), valid)."""
        valid = ids > 0
        rows = (ids - offset).clamp_min(0)
        h = sum(F.embedding(rows, table) for table in vectors)
        return h * (valid.unsqueeze(-1).to(h.dtype) * math.sqrt(self.dim)), valid

    def encode(self, history: torch.Tensor, vectors: dict[str, tuple[torch.Tensor, ...]], n_mixed: int = 1):
        """history (n_mixed·B, L): the mixed histories (the real one first, then corrupted copies) ->
        (states_c (n_mixed·B, L, d), states_x (B, Lx, d), valid_x, states_y (B, Ly, d), valid_y)."""
        h, valid = self.lookup(vectors["c"], history, 1)
        states_c = self.encoders["c"](h, valid)
        real = history[: history.shape[0] // n_mixed]
        s_x, s_y = split_domains(real, self.items)
        hx, valid_x = self.lookup(vectors["x"], s_x, self.items.offset(DOMAIN_X))
        hy, valid_y = self.lookup(vectors["y"], s_y, self.items.offset(DOMAIN_Y))
        return states_c, self.encoders["x"](hx, valid_x), valid_x, self.encoders["y"](hy, valid_y), valid_y

    @staticmethod
    def last(states: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The most recent item's state (B, d) of left-padded states; 0 for an empty subsequence."""
        return states[:, -1] * valid[:, -1:].to(states.dtype)

    def in_domain(self, ids: torch.Tensor, domain: int) -> torch.Tensor:
        """Bool (same shape): which internal ids are items of `domain`."""
        lo = self.items.offset(domain)
        return (ids >= lo) & (ids < lo + self.items.n_items(domain))

    def corrupt(self, history: torch.Tensor, keep: int, generator: Optional[torch.Generator]) -> torch.Tensor:
        """history with the items of the domain other than `keep` replaced by uniform random items of that domain."""
        other = 1 - keep
        lo = self.items.offset(other)
        swap = self.in_domain(history, other)
        noise = torch.randint(lo, lo + self.items.n_items(other), history.shape, device=history.device,
                              generator=generator)
        return torch.where(swap, noise, history)

    def loss(self, history, target, target_domain, generator: Optional[torch.Generator] = None):
        """λ·L_pred + (1 - λ)·L_cl (module docstring) -> {"total", "rec" (L_pred), "mi" (L_cl)}."""
        lc, lam = self.config.loss, self.config.c2dsr.lambda_pred
        target_domain = target_domain.long()
        local = self.target_local(target, target_domain)
        history = trim_padding(history)
        infomax = lam < 1.0
        mixed = history
        if infomax:  # Enc_c reads the real history and both corrupted ones in one pass
            mixed = torch.cat([history, self.corrupt(history, DOMAIN_X, generator),
                               self.corrupt(history, DOMAIN_Y, generator)])
        vectors = self.item_vectors()
        states_c, states_x, valid_x, states_y, valid_y = self.encode(mixed, vectors, 3 if infomax else 1)
        b = history.shape[0]
        u_c = states_c[:b, -1]
        is_x = (target_domain == DOMAIN_X).unsqueeze(-1)
        u_d = torch.where(is_x, self.last(states_x, valid_x), self.last(states_y, valid_y))
        share, specific = domain_cross_entropy(
            [u_c, u_c + u_d], local, target_domain, (self.out[0].weight, self.out[1].weight), 1.0,
            lc.domain_loss_norm, lc.ce_impl, lc.ce_chunk_rows, self.biases())
        pred = share + specific
        if not infomax:
            return {"total": pred, "rec": pred.detach()}
        mi = self.infomax(history, states_c, states_x, valid_x, states_y, valid_y)
        return {"total": lam * pred + (1.0 - lam) * mi, "rec": pred.detach(), "mi": mi.detach()}

    def infomax(self, history, states_c, states_x, valid_x, states_y, valid_y) -> torch.Tensor:
        """L_cl = BCE of D_x and D_y on their positive and negative pairs, over rows with both domains (module doc)."""
        b = history.shape[0]
        at_x, at_y = self.in_domain(history, DOMAIN_X), self.in_domain(history, DOMAIN_Y)
        real, keep_x, keep_y = states_c[:b], states_c[b:2 * b], states_c[2 * b:]  # keep_x: Y items corrupted
        rows = at_x.any(1) & at_y.any(1)
        if not bool(rows.any()):
            return states_c.new_zeros(())
        r_x, r_y = masked_mean(states_x, valid_x), masked_mean(states_y, valid_y)
        total = states_c.new_zeros(())
        # D_x: X-specific vs Enc_c at the Y positions, real vs X items corrupted (keep_y); D_y the other way round
        for disc, single, true, false, at in ((self.discriminators[0], r_x, real, keep_y, at_y),
                                              (self.discriminators[1], r_y, real, keep_x, at_x)):
            # disc(a, b) = a·W·b + bias, written out: nn.Bilinear's kernel materialises a (B, d, d) tensor
            weighted = single[rows] @ disc.weight[0].t()
            pos = (masked_mean(true, at)[rows] * weighted).sum(-1) + disc.bias
            neg = (masked_mean(false, at)[rows] * weighted).sum(-1) + disc.bias
            total = total + F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) \
                + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
        return total

    @torch.no_grad()
    def score(self, history, target_domain: int, *, sampler=None, infer_steps=None, generator=None):
        """(B, n_items(d*)) = W_{d*}·(u_c + u_{d*}) + b_{d*}; sampler / infer_steps / generator are ignored."""
        d = int(target_domain)
        history = trim_padding(history)
        states_c, states_x, valid_x, states_y, valid_y = self.encode(history, self.item_vectors())
        u_d = self.last(states_x, valid_x) if d == DOMAIN_X else self.last(states_y, valid_y)
        return self.item_scores(states_c[:, -1] + u_d, self.out[d].weight, 1.0, self.bias(d))


def build_c2dsr(config: Config, dataset: Any, max_len: int, from_checkpoint: bool) -> C2DSR:
    """C2DSR for `dataset`: its graphs from dataset.train_sequences (never the evaluation cases), or, from a
    checkpoint, empty graphs that the saved weights replace."""
    graphs = None if from_checkpoint else transition_graphs(dataset.train_sequences, dataset.items)
    return C2DSR(config, dataset.items, max_len, graphs)
