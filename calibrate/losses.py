"""Per-sample losses for the Fisher and Taylor passes.

Group Fisher needs a loss L_n per sample. With labels it is the cross-entropy of the
classifier output. Without labels it is the *true* Fisher: labels are drawn from the model's
own predictive distribution, y_n ~ softmax(z_n), and L_n = −log p(y_n | x_n).

Outputs that are not classifiers (detection heads, feature maps, embeddings) are treated as the
mean of a Gaussian with the output's own spread: y = f(x) + σ·ε, ε ~ N(0, I),
L_n = ‖f(x_n) − y_n‖² / (2σ²), where σ is the standard deviation of that output over the batch
(detached). Drawing y from the model's predictive distribution makes this the true Fisher of
that Gaussian model; dividing by σ² puts outputs of different scales (pixel boxes next to
sigmoid scores) on an equal footing. A classifier output is a float [N, K] tensor, K ≥ 2; if it
comes out of a Softmax it is read as probabilities, otherwise as logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from onnxprune.model.outputs import OutputKind, first_classifier


def _log_probs(output: torch.Tensor, kind: OutputKind) -> torch.Tensor:
    if kind.probabilities:
        return torch.log(output.clamp_min(1e-12))
    return F.log_softmax(output, dim=1)


def per_sample_loss(outputs: tuple[torch.Tensor, ...], kinds: list[OutputKind],
                    labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """L_n for every sample n of the batch: a [N] tensor (module docstring)."""
    if labels is not None:
        first = first_classifier(kinds)
        if first is None:
            raise ValueError("labels were given but the model has no classifier output "
                             "(a float [N, K] output); use --no-labels")
        log_p = _log_probs(outputs[first].float(), kinds[first])
        return F.nll_loss(log_p, labels.to(log_p.device), reduction="none")
    total = None
    for output, kind in zip(outputs, kinds):
        if not torch.is_floating_point(output):
            continue
        loss = _sampled_loss(output.float(), kind, generator)
        total = loss if total is None else total + loss
    if total is None:
        raise ValueError("the model has no floating-point output to score")
    return total


def _sampled_loss(output: torch.Tensor, kind: OutputKind, generator: torch.Generator):
    n = output.shape[0]
    if kind.classifier:
        log_p = _log_probs(output, kind)
        sampled = torch.multinomial(log_p.detach().exp().cpu(), 1, generator=generator)
        return F.nll_loss(log_p, sampled[:, 0].to(output.device), reduction="none")
    flat = output.reshape(n, -1)
    sigma = flat.detach().std() if flat.numel() > 1 else flat.new_tensor(1.0)
    sigma = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    noise = torch.randn(flat.shape, generator=generator).to(flat.device)
    target = flat.detach() + sigma * noise
    return ((flat - target) ** 2).sum(dim=1) / (2 * sigma ** 2)
