"""What an IC-MoE run's mixture did: expert load per kind, vote entropy, how much the pixel-probability votes
agree with the labels, and each loss term's share of the objective.

Evaluation accumulates `VotingStats` batch by batch (sums, so that batches and processes add up); the loop turns
them and the training log into the `diagnostics` of `eval_results.json`, the log and the model card.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from modeling_icmoe import IcMoeAdapterConfig, IcMoeRouting
from modeling_icmoe.losses import label_consistency, resize_masks
from modeling_icmoe.router import top_k_votes

VOTING_KEYS = ("vote_entropy", "label_agreement_gain", "pixel_vote_agreement_gain", "pixel_vote_switch_rate")


@dataclass
class VotingStats:
    """Sums over tokens (and layers) of the voting diagnostics; `summary()` divides by the token count.

    - `vote_entropy`: entropy of each token's fused votes over the routed experts (0 for top-1, at most log k).
    - `label_agreement_gain`: label consistency `1 - |p - y|` of the voted experts' pixel probabilities (vote
      weighted) minus that of the average routed expert: > 0 when tokens go to experts whose pixel vote is right.
    - `pixel_vote_agreement_gain`: the part of that gain which the pixel-probability term adds, `sum_e (v_e -
      v_router_e) c_e` against the votes the router alone would give; exactly 0 when votes ignore the pixel
      probabilities.
    - `pixel_vote_switch_rate`: share of tokens whose top-k experts differ from the router's own top-k.
    """

    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(len(VOTING_KEYS), dtype=torch.float64))
    tokens: float = 0.0

    @torch.no_grad()
    def add(self, routing: tuple[IcMoeRouting, ...], labels: torch.Tensor, config: IcMoeAdapterConfig) -> None:
        """Adds one batch. `labels`: the batch's binary masks `(B, P, H, W)` in the frame of `pixel_values`."""
        if not routing:
            return
        token_labels = resize_masks(labels.float().amax(dim=1), tuple(routing[0].router_logits.shape[1:3]))
        top_k = config.num_experts_per_tok
        for r in routing:
            votes = r.votes.float()  # (B, H, W, R)
            consistency = label_consistency(r.routed_pixel_logits, token_labels)  # (B, H, W, R)
            router_votes, router_top = top_k_votes(r.router_logits.float() / config.vote_temperature, top_k)
            entropy = -(votes * votes.clamp(min=1e-12).log()).sum(dim=-1)
            agreement = (votes * consistency).sum(dim=-1) - consistency.mean(dim=-1)
            pixel_gain = ((votes - router_votes) * consistency).sum(dim=-1)
            switched = (r.top_k_indices.sort(dim=-1).values != router_top.sort(dim=-1).values).any(dim=-1)
            values = [entropy.sum(), agreement.sum(), pixel_gain.sum(), switched.float().sum()]
            self.sums += torch.stack(values).double().cpu()
            self.tokens += votes[..., 0].numel()

    def summary(self) -> dict[str, float]:
        return {key: float(value / max(self.tokens, 1.0)) for key, value in zip(VOTING_KEYS, self.sums)}


def load_by_kind(load: np.ndarray, config: IcMoeAdapterConfig) -> dict[str, float]:
    """Share of routed (token, slot) pairs per expert kind, averaged over layers; `load` is (layers, routed)."""
    kinds = config.expert_kinds()[config.num_shared_experts :]
    mean = np.asarray(load).mean(axis=0)
    return {kind: round(float(sum(s for k, s in zip(kinds, mean) if k == kind)), 4) for kind in dict.fromkeys(kinds)}


# The load-balancing loss is 1 for a perfectly balanced router: only its excess over 1 is something to minimise.
LOSS_FLOORS = {"load_balance": 1.0}


def training_diagnostics(records: list[dict], weights: dict[str, float]) -> dict:
    """Each weighted loss term's mean share of the objective over the logged steps (the load-balancing term by its
    excess over its floor of 1), and the contrastive loss at the first and the last logged step. `weights`: the
    model's `objective_weights()`."""
    if not records:
        return {}
    shares = {name: [] for name in weights}
    for record in records:
        terms = record["loss_terms"]
        weighted = {
            name: weight * abs(terms.get(name, 0.0) - (LOSS_FLOORS.get(name, 0.0) if name in terms else 0.0))
            for name, weight in weights.items()
        }
        total = sum(weighted.values()) or 1.0
        for name, value in weighted.items():
            shares[name].append(value / total)
    return {
        "loss_term_share": {name: round(float(np.mean(values)), 4) for name, values in shares.items()},
        "contrastive_loss_start": records[0]["loss_terms"].get("contrastive"),
        "contrastive_loss_end": records[-1]["loss_terms"].get("contrastive"),
        "logged_steps": [records[0]["step"], records[-1]["step"]],
    }


def routed_counts(router_probs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(layers, experts) count of (token, slot) pairs routed to each expert; divided by its row sum, the load."""
    return torch.stack([(votes > 0).float().sum(dim=(0, 1, 2)) for votes in router_probs])
