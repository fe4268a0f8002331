"""IC-MoE losses: segmentation (Dice, BCE, IoU), router (load balance, z-loss, vote, pixel) and the
semantic-guided contrastive loss, and `icmoe_objective`, their weighted sum as both models train it. All are pure
functions of tensors; none keeps state.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .imaging import binary_foreground_value

_EPS = 1e-6


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resizes binary masks `(..., H, W)` to `size` as area fractions in [0, 1] (antialiased bilinear)."""
    leading = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    if tuple(flat.shape[-2:]) != tuple(size):
        flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=True)
    return flat.reshape(*leading, *size).clamp(0.0, 1.0)


def binarize_labels(labels: torch.Tensor) -> torch.Tensor:
    """Checks that `labels` are binary masks ({0,1}, {0,255} or bool) and returns them as float {0, 1}."""
    if labels.dtype == torch.bool:
        return labels.float()
    if labels.is_floating_point() and not torch.isfinite(labels).all():
        raise ValueError("`labels` contain NaN or infinite values; they must be binary masks.")
    try:
        foreground = binary_foreground_value(torch.unique(labels).tolist(), "`labels`")
    except ValueError as err:
        raise ValueError(f"{err} Map multi-class masks to one class first.") from None
    return (labels == foreground).float()


def segmentation_targets(labels: torch.Tensor, size: tuple[int, int], *, binarized: bool = False) -> torch.Tensor:
    """The one rule by which every method turns label masks `(..., H, W)` into mask-loss targets at `size`:
    binary labels (checked, unless `binarized` says `binarize_labels` already made them float {0, 1}), resized as area
    fractions, foreground where more than half of a cell is."""
    return resize_masks(labels if binarized else binarize_labels(labels), size) > 0.5


def segmentation_losses(
    pred_masks: torch.Tensor, iou_scores: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Dice + BCE of the best of the multimask outputs, and MSE of the IoU head against the real IoU.

    Args:
        pred_masks (`torch.Tensor` of shape `(B, P, M, h, w)`): low-resolution mask logits.
        iou_scores (`torch.Tensor` of shape `(B, P, M)`): predicted IoU per mask.
        targets (`torch.Tensor` of shape `(B, P, h, w)`): binary targets at the mask resolution.

    Returns:
        `dict` with `dice`, `bce` and `iou` scalars. Of the M candidate masks per prompt, the one with the lowest
        Dice + BCE is supervised (as in SAM's own training), so an ambiguous prompt is not forced onto one output.
    """
    logits = pred_masks.float()
    target = targets.float().unsqueeze(2).expand_as(logits)  # (B, P, M, h, w)
    probs = logits.sigmoid()
    intersection = (probs * target).sum(dim=(-1, -2))  # (B, P, M)
    # Smoothing of 1 makes an empty target with an empty prediction a perfect (zero-loss) case, not NaN.
    dice = 1.0 - (2.0 * intersection + 1.0) / (probs.sum(dim=(-1, -2)) + target.sum(dim=(-1, -2)) + 1.0)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(-1, -2))  # (B, P, M)
    best = (dice + bce).argmin(dim=-1, keepdim=True)  # (B, P, 1)

    hard = logits > 0
    target_bool = target > 0.5
    inter = (hard & target_bool).sum(dim=(-1, -2)).float()
    union = (hard | target_bool).sum(dim=(-1, -2)).float()
    true_iou = torch.where(union > 0, inter / union.clamp(min=1.0), torch.ones_like(union))  # (B, P, M)
    return {
        "dice": dice.gather(-1, best).mean(),
        "bce": bce.gather(-1, best).mean(),
        "iou": F.mse_loss(iou_scores.float(), true_iou),
    }


def load_balancing_loss(
    router_logits: torch.Tensor, top_k_indices: torch.Tensor, num_experts: int, *, temperature: float = 1.0
) -> torch.Tensor:
    """Switch/Mixtral load-balancing loss `E * sum_e f_e * P_e`; equals 1 for a perfectly balanced router.

    f_e is the share of routed (token, slot) pairs that go to expert e; P_e the mean vote probability of e,
    `softmax(g / temperature)`, the distribution the router actually routes by.
    """
    probs = torch.softmax(router_logits.float() / temperature, dim=-1).reshape(-1, num_experts)  # (T, E)
    routed = F.one_hot(top_k_indices.reshape(-1), num_experts).float()  # (T*k, E)
    return num_experts * (routed.mean(dim=0) * probs.mean(dim=0)).sum()


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition of the router logits (keeps them small and numerically stable)."""
    return torch.logsumexp(router_logits.float(), dim=-1).pow(2).mean()


def pixel_loss(pixel_logits: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
    """BCE of every expert's pixel vote `(B, H, W, E)` against the token labels `(B, H, W)` (fractions in [0, 1])."""
    target = token_labels.unsqueeze(-1).expand_as(pixel_logits).float()  # (B, H, W, E)
    return F.binary_cross_entropy_with_logits(pixel_logits.float(), target)


def label_consistency(pixel_logits: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
    """`1 - |p - y|` per token and expert `(B, H, W, E)`: how well each expert's pixel vote agrees with the label."""
    return 1.0 - (pixel_logits.float().sigmoid() - token_labels.unsqueeze(-1).float()).abs()


def vote_loss(
    router_logits: torch.Tensor,
    pixel_logits: torch.Tensor,
    token_labels: torch.Tensor,
    *,
    temperature: float,
    consistency_weight: float,
) -> torch.Tensor:
    """KL(target || router votes) of one layer, which teaches the router to predict label-consistent votes.

    Args:
        router_logits (`torch.Tensor` of shape `(B, H, W, R)`)
        pixel_logits (`torch.Tensor` of shape `(B, H, W, R)`): the routed experts' foreground logits.
        token_labels (`torch.Tensor` of shape `(B, H, W)`): foreground fraction of each token, in [0, 1].

    The target `softmax((g + lambda log c) / tau)` boosts the experts whose pixel vote agrees with the label
    (`c = 1 - |p - y|`); it is detached, so only the router learns from it.
    """
    with torch.no_grad():
        consistency = label_consistency(pixel_logits, token_labels)  # (B, H, W, R)
        guided = (router_logits.float() + consistency_weight * torch.log(consistency + _EPS)) / temperature
        target_votes = torch.softmax(guided, dim=-1)  # (B, H, W, R)
    log_votes = torch.log_softmax(router_logits.float() / temperature, dim=-1)
    return F.kl_div(log_votes.flatten(0, 2), target_votes.flatten(0, 2), reduction="batchmean")


def semantic_contrastive_loss(
    embeddings: torch.Tensor,
    token_labels: torch.Tensor,
    predictions: torch.Tensor,
    *,
    samples_per_class: int,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Semantic-guided, class-balanced supervised contrastive loss on projected image embeddings.

    Args:
        embeddings (`torch.Tensor` of shape `(B, D, h, w)`): L2-normalised projected embeddings.
        token_labels (`torch.Tensor` of shape `(B, h, w)`): foreground fraction per embedding pixel.
        predictions (`torch.Tensor` of shape `(B, h, w)`): the decoder's foreground probability per pixel.

    Anchors: per image and class, as many as the smaller class has (at most `samples_per_class`), drawn with
    weights favouring hard pixels, where the decoder disagrees with the label and on the mask boundary (the
    semantic guidance); each image's two class prototypes (mean embedding of the class) join them. Every anchor
    is contrasted with each same-class candidate of the batch against all other-class candidates,
    `-log(exp(s_p) / (exp(s_p) + sum_n exp(s_n)))`, which reaches 0 when the classes separate (the SupCon form,
    with the other positives in the denominator, has a floor of log(#positives) that hides any learning).
    Images whose mask is empty or full give no anchors; a batch with none returns a zero that still reaches
    the head.
    """
    batch, dim = embeddings.shape[:2]
    classes = (token_labels > 0.5).float()  # (B, h, w)
    with torch.no_grad():
        padded = F.pad(classes[:, None], (1, 1, 1, 1), mode="replicate")
        boundary = (F.max_pool2d(padded, 3, 1) != -F.max_pool2d(-padded, 3, 1)).float()[:, 0]  # (B, h, w)
        # A diverged decoder (non-finite predictions) must not crash the anchor draw: its pixels count as wrong,
        # and the non-finite loss is then reported by the training loop with its step.
        error = (predictions.float() - classes).abs().nan_to_num(nan=1.0, posinf=1.0, neginf=1.0)
        hardness = 0.1 + error.clamp(max=1.0) + boundary  # (B, h, w)

    features, feature_classes = [], []
    for image in range(batch):
        flat_classes = classes[image].reshape(-1)
        members = [(flat_classes == value).nonzero().squeeze(1) for value in (0.0, 1.0)]
        count = min(samples_per_class, *(m.numel() for m in members))
        if count == 0:
            continue
        flat = embeddings[image].reshape(dim, -1).t()  # (h*w, D)
        weights = hardness[image].reshape(-1)
        for value, indices in zip((0.0, 1.0), members):
            chosen = indices[torch.multinomial(weights[indices], count, replacement=False, generator=generator)]
            prototype = F.normalize(flat[indices].mean(dim=0, keepdim=True), dim=-1)
            features += [flat[chosen], prototype]
            feature_classes += [torch.full((count + 1,), value, device=flat.device)]
    if not features:
        return embeddings.sum() * 0.0

    features = torch.cat(features)  # (N, D), as many of each class
    labels = torch.cat(feature_classes)  # (N,)
    similarity = features @ features.t() / temperature  # (N, N)
    same = labels[:, None] == labels[None, :]
    positives = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)  # (N, N)
    negatives_lse = torch.logsumexp(similarity.masked_fill(same, float("-inf")), dim=1, keepdim=True)  # (N, 1)
    pair_loss = F.softplus(negatives_lse - similarity)  # (N, N): -log(e^s_p / (e^s_p + sum_n e^s_n))
    return (pair_loss * positives).sum(dim=1).div(positives.sum(dim=1).clamp(min=1)).mean()


def routing_losses(routings, foreground: torch.Tensor, adapter_config) -> dict[str, torch.Tensor]:
    """The router terms of every IC-MoE layer, averaged over the layers: `load_balance`, `router_z`, `vote`, `pixel`.

    Args:
        routings: each layer's `IcMoeRouting` (router logits, votes, top-k indices, pixel logits).
        foreground (`torch.Tensor` of shape `(B, H, W)`): 1 where any object is (fractions allowed), at any
            resolution; resized to the token grid as area fractions.
        adapter_config: the `IcMoeAdapterConfig` (routed experts, temperatures, weights).
    """
    token_labels = resize_masks(foreground, tuple(routings[0].router_logits.shape[1:3]))  # (B, Hg, Wg)
    layer_terms = [
        (
            load_balancing_loss(
                r.router_logits, r.top_k_indices, adapter_config.num_routed_experts,
                temperature=adapter_config.vote_temperature,
            ),
            router_z_loss(r.router_logits),
            vote_loss(
                r.router_logits, r.routed_pixel_logits, token_labels,
                temperature=adapter_config.vote_temperature,
                consistency_weight=adapter_config.label_consistency_weight,
            ),
            pixel_loss(r.pixel_logits, token_labels),
        )
        for r in routings
    ]
    return {
        name: torch.stack(values).mean()
        for name, values in zip(("load_balance", "router_z", "vote", "pixel"), zip(*layer_terms))
    }


AUXILIARY_TERMS = ("load_balance", "router_z", "vote", "pixel", "contrastive")


def icmoe_objective(
    task_terms: dict[str, torch.Tensor],
    weights: dict[str, float],
    *,
    routings,
    foreground: torch.Tensor,
    adapter_config,
    projected_embeddings: torch.Tensor | None = None,
    predicted_foreground: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training objective of an IC-MoE model: its task terms, the router terms and the contrastive term, summed
    with `weights`.

    Args:
        task_terms: the task's own loss terms (the prompted model's `dice`, `bce`, `iou`; the prompt-free model's
            `ce`, `dice`).
        weights: the weight of every term, in the order of the returned terms (`model.objective_weights()`).
        routings: each IC-MoE layer's `IcMoeRouting`; empty when the layers did not run (the router terms are 0).
        foreground (`torch.Tensor` of shape `(B, H, W)`): 1 where any object is (fractions allowed), what the
            experts' pixel votes and the contrastive classes are scored against.
        adapter_config: the `IcMoeAdapterConfig`.
        projected_embeddings (`torch.Tensor` of shape `(B, D, h, w)`, *optional*): the projection head's image
            embeddings; `None` without a head (the contrastive term is 0).
        predicted_foreground (`torch.Tensor` of shape `(B, h, w)`): the decoder's foreground probability at the
            embeddings' grid (detached), needed with `projected_embeddings`.

    Returns:
        The weighted sum and every weighted term, detached. Zero-weight terms stay in the sum: their parameters then
        get a (zero) gradient, which DDP needs.
    """
    zero = next(iter(task_terms.values())).new_zeros((), dtype=torch.float32)
    terms = {**task_terms, **dict.fromkeys(AUXILIARY_TERMS, zero)}
    if routings:
        terms.update(routing_losses(routings, foreground, adapter_config))
    if projected_embeddings is not None:
        terms["contrastive"] = semantic_contrastive_loss(
            projected_embeddings,
            resize_masks(foreground, tuple(projected_embeddings.shape[-2:])),
            predicted_foreground,
            samples_per_class=adapter_config.contrastive_samples_per_class,
            temperature=adapter_config.contrastive_temperature,
        )
    loss = sum(weight * terms[name] for name, weight in weights.items())
    return loss, {name: terms[name].detach() for name in weights}


def check_class_labels(labels: torch.Tensor, num_labels: int) -> torch.LongTensor:
    """Checks that `labels` are class ids in `[0, num_labels)` and returns them as int64."""
    if labels.is_floating_point():
        if not torch.isfinite(labels).all() or (labels != labels.round()).any():
            raise ValueError("`labels` must hold integer class ids; found NaN, infinite or fractional values.")
    elif labels.dtype == torch.bool:
        labels = labels.long()
    bad = (labels < 0) | (labels >= num_labels)
    if bad.any():
        values = torch.unique(labels[bad])
        raise ValueError(
            f"`labels` hold values {values[:8].tolist()}{' ...' if values.numel() > 8 else ''} that are not classes of "
            f"this model (ids 0 .. {num_labels - 1}); map them to the model's classes first."
        )
    return labels.long()


def semantic_losses(logits: torch.Tensor, labels: torch.LongTensor, *, smooth: float = 1e-5) -> dict[str, torch.Tensor]:
    """Cross-entropy over the classes and the Dice loss of the foreground classes.

    Args:
        logits (`torch.Tensor` of shape `(B, L, h, w)`): class logits, brought to the labels' size (bilinear).
        labels (`torch.LongTensor` of shape `(B, H, W)`): class ids, 0 the background.

    Dice is computed per foreground class over the whole batch (the batch Dice of nnU-Net) from the softmax
    probabilities, `1 - (2 |P Y| + s) / (|P| + |Y| + s)`, and averaged over the classes; a class absent from the batch
    then only asks for its probabilities to be 0.
    """
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
        logits = F.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, labels)
    probs = logits.softmax(dim=1)[:, 1:]  # (B, L-1, H, W)
    target = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()  # (B, L-1, H, W)
    intersection = (probs * target).sum(dim=(0, 2, 3))  # (L-1,)
    dice = 1.0 - (2.0 * intersection + smooth) / (probs.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3)) + smooth)
    return {"ce": ce, "dice": dice.mean()}
