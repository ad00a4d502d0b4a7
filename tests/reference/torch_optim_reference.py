#!/usr/bin/python3
"""PyTorch half of kiln's optimizer, schedule and clipping tests.

Usage: torch_optim_reference.py MANIFEST.json INPUTS.safetensors RESULTS.safetensors

The manifest has three lists, each optional:

  "optim":    trajectories. Parameters start from "<case>/init/<param>"; at step s the gradient
              of a parameter is "<case>/grad/<s>/<param>" (absent: .grad is None, so torch skips
              it). Groups carry kiln's options JSON (OptimizerOptions::to_json) and "lrs" may
              give each group's lr per step. Writes the final "<case>/param/<param>", every
              state tensor as "<case>/state/<param>/<buffer>" and "<case>/step/<param>".
  "clip":     clip_grad_norm_ / clip_grad_value_ on "<case>/grad/<param>". Writes the clipped
              "<case>/clipped/<param>" and, for norm clipping, "<case>/norm".
  "schedule": a torch.optim.lr_scheduler run for "steps" steps. Writes "<case>/lrs", the lr in
              effect at each step (index 0 = before the first scheduler.step()).

Runs under Debian's python3-torch (CPU).
"""
import json
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import load_safetensors, save_safetensors  # noqa: E402

OPTIMIZERS = {"SGD": torch.optim.SGD, "Adagrad": torch.optim.Adagrad, "RMSprop": torch.optim.RMSprop,
              "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}


class AdamWithoutBiasCorrection:
    """torch's single-tensor Adam/AdamW step with both bias corrections fixed at 1 (torch.optim
    has no switch for that), written with the same tensor ops in the same order."""

    def __init__(self, param_groups, decoupled):
        self.param_groups = param_groups
        self.decoupled = decoupled
        self.state = {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state.setdefault(p, {})
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                if self.decoupled:
                    p.mul_(1 - lr * weight_decay)
                elif weight_decay != 0:
                    grad = grad.add(p, alpha=weight_decay)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    denom = state["max_exp_avg_sq"].sqrt().add_(eps)
                else:
                    denom = exp_avg_sq.sqrt().add_(eps)
                p.addcdiv_(exp_avg, denom, value=-lr)


def torch_options(optimizer, options):
    """kiln's options JSON -> torch keyword arguments (the names are torch's already)."""
    kwargs = dict(options)
    if optimizer in ("Adam", "AdamW"):
        kwargs["betas"] = tuple(kwargs["betas"])
        kwargs.pop("bias_correction")
    return kwargs


def run_trajectory(case, tensors, results):
    name = case["name"]
    params = {p: tensors[f"{name}/init/{p}"].clone().requires_grad_(True) for p in case["params"]}
    groups = []
    for group in case["groups"]:
        entry = torch_options(case["optimizer"], group["options"])
        entry["params"] = [params[p] for p in group["params"]]
        groups.append(entry)
    bias_correction = all(g["options"].get("bias_correction", True) for g in case["groups"])
    if bias_correction:
        # Group 0's options are also the defaults: torch's Adagrad takes initial_accumulator_value
        # from its constructor only, ignoring the groups' values.
        defaults = torch_options(case["optimizer"], case["groups"][0]["options"])
        optimizer = OPTIMIZERS[case["optimizer"]](groups, **defaults)
    else:
        defaults = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False}
        optimizer = AdamWithoutBiasCorrection([{**defaults, **g} for g in groups], case["optimizer"] == "AdamW")
    lrs = case.get("lrs")
    for step in range(case["steps"]):
        if lrs is not None:
            for g, group in enumerate(optimizer.param_groups):
                group["lr"] = lrs[step][g]
        for p, tensor in params.items():
            grad = tensors.get(f"{name}/grad/{step}/{p}")
            tensor.grad = None if grad is None else grad.clone()
        optimizer.step()
    for p, tensor in params.items():
        results[f"{name}/param/{p}"] = tensor.detach()
        for key, value in optimizer.state.get(tensor, {}).items():
            if value is None:  # SGD without momentum keeps momentum_buffer = None
                continue
            if key == "step":
                results[f"{name}/step/{p}"] = torch.tensor(float(value), dtype=torch.float64)
            else:
                results[f"{name}/state/{p}/{key}"] = value


def run_clip(case, tensors, results):
    name = case["name"]
    params = []
    for p in case["params"]:
        grad = tensors[f"{name}/grad/{p}"]
        param = torch.zeros_like(grad, requires_grad=True)
        param.grad = grad.clone()
        params.append(param)
    if case["kind"] == "norm":
        results[f"{name}/norm"] = torch.nn.utils.clip_grad_norm_(params, case["max_norm"]).to(torch.float64)
    else:
        torch.nn.utils.clip_grad_value_(params, case["clip_value"])
    for p, param in zip(case["params"], params):
        results[f"{name}/clipped/{p}"] = param.grad


def run_schedule(case, results):
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=case["base_lr"])
    kind, kwargs = case["kind"], case.get("kwargs", {})
    lr_scheduler = torch.optim.lr_scheduler

    def make(kind, kwargs):
        if kind == "CosineAnnealingLR":
            return lr_scheduler.CosineAnnealingLR(optimizer, **kwargs)
        if kind == "LinearLR":
            return lr_scheduler.LinearLR(optimizer, **kwargs)
        if kind == "StepLR":
            return lr_scheduler.StepLR(optimizer, **kwargs)
        if kind == "LambdaLR-warmup":
            warmup = kwargs["warmup_steps"]
            return lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        raise ValueError(f"unknown scheduler {kind}")

    if kind == "SequentialLR":
        # SequentialLR steps its second scheduler with an explicit epoch at the milestone (the
        # closed form), which torch 1.13 reports as deprecated; the values are what we compare.
        warnings.filterwarnings("ignore", message="The epoch parameter", category=UserWarning)
        schedulers = [make(k, a) for k, a in zip(kwargs["kinds"], kwargs["kwargs"])]
        scheduler = lr_scheduler.SequentialLR(optimizer, schedulers, milestones=kwargs["milestones"])
    else:
        scheduler = make(kind, kwargs)
    lrs = [optimizer.param_groups[0]["lr"]]
    for _ in range(case["steps"] - 1):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    results[f"{case['name']}/lrs"] = torch.tensor(lrs, dtype=torch.float64)


def main():
    manifest_path, inputs_path, results_path = sys.argv[1:4]
    with open(manifest_path) as f:
        manifest = json.load(f)
    tensors = load_safetensors(inputs_path)
    results = {}
    for case in manifest.get("optim", []):
        run_trajectory(case, tensors, results)
    for case in manifest.get("clip", []):
        run_clip(case, tensors, results)
    for case in manifest.get("schedule", []):
        run_schedule(case, results)
    save_safetensors(results_path, results)


if __name__ == "__main__":
    main()
