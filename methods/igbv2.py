"""IGBv2: improvable gap balancing with a soft actor-critic agent choosing the weights.

Paper: Y. Dai, N. Fei, Z. Lu, "Improvable Gap Balancing for Multi-Task Learning", UAI 2023
(official code: YanqiDai/IGB4MTL, ``methods/loss_weight_methods.py``
``ImprovableGapBalancing_v2`` and ``methods/SAC_Agent.py``).

What it does: treats loss weighting as a reinforcement-learning problem. The state is the
vector of the current batch's task losses, the action the weights a (a = T·softmax(u),
u ~ N(μ(s), σ(s)) from the actor), and the reward of a step the smallest improvement,
min_t (L_t(k−1) − L_t(k)) / L_t^base, normalised by each task's base loss (its mean
training loss in epoch ``base_epoch``). A soft actor-critic (SAC) agent learns from a replay
buffer of (s, a, r, s') transitions; the network minimises Σ_t a_t·log L_t.

Schedule, as in the authors' code (E = steps per epoch):
- transitions are recorded from the first step after the base losses are set (the end of
  epoch ``base_epoch``);
- until epoch ``start_epoch`` the weights are random, T·softmax of standard normal draws;
  afterwards the actor's stochastic action on the current losses;
- from epoch ``update_after`` on, at every step k with k mod ``update_every`` = 0, the agent
  takes ⌊update_every·κ/2⌋ gradient steps on batches of ⌊sac_batch_size·κ/2⌋ transitions,
  κ = 1 + (buffer fill)/(buffer size).
The authors count these thresholds in steps (epoch·E); with a constant E, as here, counting
epochs is the same.

SAC (the authors' settings): actor and twin critics are MLPs with two hidden layers of 128
ReLU units (the actor's trunk also ends in a ReLU), log σ clamped to [−20, 2], discount 0.99,
Polyak factor 0.005, entropy temperature α learnt from 0.2 towards the target entropy −T,
Adam with ``sac_lr`` for actor, critics and α. The actor's log-probability uses the
tanh-squashing correction Σ 2(log 2 − u − softplus(−2u)) although the action is a softmax,
exactly as in the authors' code. No terminal states.

Hyperparameters (the authors' defaults): ``sac_lr`` 3e-4, ``buffer_size`` 10000,
``base_epoch`` 1, ``start_epoch`` 5, ``update_after`` 3, ``update_every`` 50,
``sac_batch_size`` 256.

Weight scale: the weights recorded (and applied) are the gradient weights of Σ a_t·log L_t
with respect to the raw losses, w_t = a_t / L_t; the agent's action a (summing to T) is logged
as ``action/<task>`` and the reward as ``reward``.

State: actor, critics, target critics, log α, the three Adam states, the replay buffer, the
base losses and the step bookkeeping are all in the state dict (tensors and primitives), so a
resumed run continues the same agent.

Deviations: (i) the authors scale the reward by lr₀ / lr (the initial over the current
learning rate of the network, re-read every epoch); the method contract gives no access to
the learning rate, so the scale is 1 — identical with a constant learning rate, different
after a learning-rate decay. A run whose schedule changes the learning rate between epochs
(``train.scheduler`` cosine, or step with ``step_size`` < ``epochs``) is therefore refused
when it is built (``IGBv2Config.check_training``); in a loop of one's own
(``mtl_harness.MethodStep``) nothing checks it. (ii) The agent's randomness (random weights, actions, replay
sampling) comes from the run's method generator instead of the global generator. (iii) If the
agent is due to train while its replay buffer is still empty (possible only when
``update_after`` ≤ ``base_epoch``), the authors' code fails; here the update is skipped.
(iv) log α is a float32 parameter (float64 in the authors' code).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.errors import ConfigError, param
from methods._weighting_utils import log_per_task
from methods.base import MethodConfig, StepContext, Weighted, Weighting
from methods.registry import register_method

HIDDEN = 128
DISCOUNT = 0.99
POLYAK = 0.005
INIT_ALPHA = 0.2
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class IGBv2Config(MethodConfig):
    sac_lr: float = param(3e-4, low=0.0, low_open=True)
    """Learning rate of the actor's, the critics' and the temperature's Adam."""
    buffer_size: int = param(10000, low=1)
    """Capacity of the replay buffer (transitions)."""
    base_epoch: int = param(1, low=0)
    """Epoch whose mean training losses are the base losses of the reward."""
    start_epoch: int = param(5, low=0)
    """Epochs of random weights before the actor chooses them."""
    update_after: int = param(3, low=0)
    """First epoch in which the agent is trained."""
    update_every: int = param(50, low=1)
    """The agent is trained at every step divisible by this."""
    sac_batch_size: int = param(256, low=1)
    """Transitions per agent update (scaled by κ/2 as in the authors' code)."""

    def check_training(self, train) -> None:
        changes = learning_rate_changes(train)
        if changes:
            raise ConfigError(f"igbv2 cannot follow a learning rate that changes during the run "
                              f"({changes}): its authors scale the reward by lr0/lr, which a "
                              f"method cannot see here; use train.scheduler=none, or a step "
                              f"schedule whose step_size is at least train.epochs")


def learning_rate_changes(train) -> str:
    """How the run's schedule changes the learning rate between epochs ("" if it does not):
    the scheduler steps at the end of every epoch."""
    if train.scheduler == "step" and train.step_size < train.epochs and train.gamma != 1.0:
        return (f"train.scheduler=step multiplies it by {train.gamma} after epoch "
                f"{train.step_size} of {train.epochs}")
    if train.scheduler == "cosine" and train.epochs > 1:
        return f"train.scheduler=cosine anneals it over {train.epochs} epochs"
    return ""


# --------------------------------------------------------------------------- pure maths

def igb_reward(prev_losses: Tensor, losses: Tensor, base_losses: Tensor) -> Tensor:
    """min_t (L_t(k−1) − L_t(k)) / L_t^base: the worst task's normalised improvement."""
    return ((prev_losses - losses) / base_losses).min()


def igb_weights(action: Tensor, losses: Tensor) -> Tensor:
    """[T] gradient weights of Σ_t a_t·log L_t: a_t / L_t."""
    return action / losses


def squashed_log_prob(u: Tensor, mu: Tensor, std: Tensor) -> Tensor:
    """[B, 1] log-density of the Gaussian sample u with the tanh correction of the authors'
    code: Σ log N(u; μ, σ) − Σ 2(log 2 − u − softplus(−2u))."""
    gauss = -((u - mu) ** 2) / (2 * std ** 2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    correction = 2 * (math.log(2) - u - F.softplus(-2 * u))
    return gauss.sum(dim=-1, keepdim=True) - correction.sum(dim=-1, keepdim=True)


def soft_q_target(reward: Tensor, next_q1: Tensor, next_q2: Tensor, next_log_prob: Tensor,
                  alpha: Tensor | float, discount: float = DISCOUNT) -> Tensor:
    """r + γ·(min(Q1', Q2') − α·log π(a'|s'))."""
    return reward + discount * (torch.min(next_q1, next_q2) - alpha * next_log_prob)


# --------------------------------------------------------------------------- the agent

def mlp(sizes: list[int], out_activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        act = nn.ReLU if i < len(sizes) - 2 else out_activation
        layers += [nn.Linear(sizes[i], sizes[i + 1]), act()]
    return nn.Sequential(*layers)


class Actor(nn.Module):
    def __init__(self, num_tasks: int):
        super().__init__()
        self.trunk = mlp([num_tasks, HIDDEN, HIDDEN], nn.ReLU)
        self.mu = nn.Linear(HIDDEN, num_tasks)
        self.log_std = nn.Linear(HIDDEN, num_tasks)
        self.num_tasks = num_tasks

    def forward(self, state: Tensor, generator: torch.Generator, deterministic: bool = False,
                with_log_prob: bool = True) -> tuple[Tensor, Tensor | None]:
        hidden = self.trunk(state)
        mu = self.mu(hidden)
        std = torch.exp(self.log_std(hidden).clamp(LOG_STD_MIN, LOG_STD_MAX))
        if deterministic:
            u = mu
        else:
            noise = torch.randn(mu.shape, generator=generator, device=generator.device,
                                dtype=mu.dtype).to(mu.device)
            u = mu + std * noise
        action = self.num_tasks * torch.softmax(u, dim=-1)
        return action, (squashed_log_prob(u, mu, std) if with_log_prob else None)


class TwinCritic(nn.Module):
    def __init__(self, num_tasks: int):
        super().__init__()
        self.q1 = mlp([2 * num_tasks, HIDDEN, HIDDEN, 1], nn.Identity)
        self.q2 = mlp([2 * num_tasks, HIDDEN, HIDDEN, 1], nn.Identity)

    def forward(self, state: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        sa = torch.cat([state, action], dim=1)
        return self.q1(sa), self.q2(sa)


@register_method("igbv2")
class IGBv2(Weighting):
    description = "IGBv2: a soft actor-critic agent weighs the log-losses to balance improvable gaps"
    Config = IGBv2Config
    # The exploration draws and the agent's networks (initialised from the global seed) see
    # the tasks by position: equivariant in distribution only.
    permutation_equivariant = False

    def __init__(self, config: IGBv2Config, task_names: tuple[str, ...]):
        super().__init__(config, task_names)
        t, n = self.num_tasks, config.buffer_size
        self.actor = Actor(t)
        self.critic = TwinCritic(t)
        self.critic_target = copy.deepcopy(self.critic)
        for p in self.critic_target.parameters():
            p.requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(INIT_ALPHA)))
        self.target_entropy = -float(t)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.sac_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.sac_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.sac_lr)
        for name, shape in (("buf_state", (n, t)), ("buf_action", (n, t)), ("buf_reward", (n, 1)),
                            ("buf_next_state", (n, t)), ("recent_losses", (2, t)),
                            ("recent_actions", (2, t)), ("base_losses", (t,))):
            self.register_buffer(name, torch.zeros(shape))
        self.buf_ptr = 0
        self.buf_fill = 0
        self.slot = 0
        self.has_base = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    # ------------------------------------------------------------------ replay buffer
    def add_transition(self, state: Tensor, action: Tensor, reward: Tensor, next_state: Tensor) -> None:
        i = self.buf_ptr
        self.buf_state[i] = state
        self.buf_action[i] = action
        self.buf_reward[i, 0] = reward
        self.buf_next_state[i] = next_state
        self.buf_ptr = (i + 1) % self.config.buffer_size
        self.buf_fill = min(self.buf_fill + 1, self.config.buffer_size)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        idx = torch.randint(0, self.buf_fill, (batch,), generator=generator,
                            device=generator.device).to(self.buf_state.device)
        return (self.buf_state[idx], self.buf_action[idx], self.buf_reward[idx],
                self.buf_next_state[idx])

    # ------------------------------------------------------------------ SAC update
    def sac_update(self, kappa: float, generator: torch.Generator) -> None:
        """One gradient step of critics, actor and temperature, then the Polyak update."""
        s, a, r, s2 = self.sample(int(self.config.sac_batch_size * (kappa / 2)), generator)
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            a2, logp2 = self.actor(s2, generator)
            tq1, tq2 = self.critic_target(s2, a2)
            target = soft_q_target(r, tq1, tq2, logp2, alpha)
        q1, q2 = self.critic(s, a)
        q_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_opt.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_opt.step()

        self.critic.requires_grad_(False)
        new_a, logp = self.actor(s, generator)
        pq1, pq2 = self.critic(s, new_a)
        actor_loss = (alpha * logp - torch.min(pq1, pq2)).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp + self.target_entropy).detach()).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters()):
                tp.mul_(1 - POLYAK).add_(POLYAK * p)

    # ------------------------------------------------------------------ the weighting
    def weigh(self, ctx: StepContext) -> Weighted:
        cfg = self.config
        losses = ctx.losses.detach()
        cur, prev = self.slot, 1 - self.slot
        self.recent_losses[cur] = losses
        if self.has_base:
            reward = igb_reward(self.recent_losses[prev], self.recent_losses[cur], self.base_losses)
            self.add_transition(self.recent_losses[prev], self.recent_actions[prev], reward,
                                self.recent_losses[cur])
            ctx.log("reward", reward)
        if ctx.epoch >= cfg.update_after and ctx.step % cfg.update_every == 0 and self.buf_fill > 0:
            kappa = 1 + self.buf_fill / cfg.buffer_size
            with torch.enable_grad():
                for _ in range(int(cfg.update_every * (kappa / 2))):
                    self.sac_update(kappa, ctx.generator)
        if ctx.epoch < cfg.start_epoch:
            draws = torch.randn(self.num_tasks, generator=ctx.generator,
                                device=ctx.generator.device).to(losses.device)
            action = self.num_tasks * torch.softmax(draws, dim=0)
        else:
            with torch.no_grad():
                action, _ = self.actor(self.recent_losses[cur][None], ctx.generator,
                                       with_log_prob=False)
            action = action[0]
        self.recent_actions[cur] = action
        self.slot = prev
        log_per_task(ctx, "action", action)
        return Weighted(weights=igb_weights(action.to(losses.dtype), losses))

    def on_epoch_end(self, epoch: int, mean_train_losses: Tensor) -> None:
        if epoch == self.config.base_epoch:
            self.base_losses.copy_(mean_train_losses.detach())
            self.has_base = True

    def get_extra_state(self) -> Any:
        return {"buf_ptr": self.buf_ptr, "buf_fill": self.buf_fill, "slot": self.slot,
                "has_base": self.has_base, "actor_opt": self.actor_opt.state_dict(),
                "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict()}

    def set_extra_state(self, state: Any) -> None:
        self.buf_ptr = int(state["buf_ptr"])
        self.buf_fill = int(state["buf_fill"])
        self.slot = int(state["slot"])
        self.has_base = bool(state["has_base"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
