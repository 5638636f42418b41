# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: dpo_loss
# requirements: gradescope-requirements.txt
# python_version: 3.11
# check_all_cell: true
# export_cell:
#     pdf: false
#     instructions: "Hand in this notebook (dpo_loss.ipynb) as your instructor asks."
# generate:
#     pdf: false
#     show_hidden: true

# %% [markdown]
# # Assignment 2 · The DPO loss on a (tiny) GPT-2
#
# *Companion of notebooks 03 and 05. Points: 9 (Q1: 2, Q2: 3, Q3: 2, Q4: 2).*
#
# Direct Preference Optimization trains a policy $\pi_\theta$ on preference pairs
# $(x, y_w, y_l)$ (a prompt, the chosen and the rejected response) against a frozen reference
# $\pi_{\text{ref}}$ with one loss (DPO paper, Eq. 7):
#
# $$\mathcal{L}_\text{DPO} = -\,\mathbb{E}\left[\log \sigma\!\Big(\beta \log\frac{\pi_\theta(y_w \mid x)}{\pi_\text{ref}(y_w \mid x)} - \beta \log\frac{\pi_\theta(y_l \mid x)}{\pi_\text{ref}(y_l \mid x)}\Big)\right].$$
#
# Everything hinges on one number per response, its **sequence log-probability**
#
# $$\log \pi(y \mid x) = \sum_{t=1}^{|y|} \log \pi(y_t \mid x, y_{<t}),$$
#
# summed over the tokens of the *response only*. Most DPO bugs live here: an off-by-one at the
# prompt/response boundary, padding counted as text, log-probabilities taken in low precision.
# You will write it, check it against the course library (`dpo_edu.models.response_logps`), then
# write the loss on top of it. Along the way you will hit the value every DPO run starts from.
#
# **How to work.** Keep this file's name (`dpo_loss.ipynb`): the checks read their tests from it.
# Fill in every `...`, run the cell, then its `grader.check("q…")` cell. The
# public checks you see catch the usual slips; hidden tests (other inputs, edge cases) also count
# toward your grade. The tests name their own variables with a leading underscore, so they
# leave yours alone. Do not call `dpo_edu.models.response_logps` or `dpo_edu.losses.dpo_loss`
# in your answers: the hidden tests compare you with them.

# %%
import copy
import math

import torch

from dpo_edu import data, models
from dpo_edu.models import ModelConfig

torch.manual_seed(0)
torch.set_num_threads(1)  # these models are tiny: one CPU thread is the fastest

# %% [markdown]
# ## A tiny GPT-2, its tokenizer and a batch of pairs
#
# A real GPT-2 would take minutes to download; its mechanics are the same at any size. So we
# build one of 2 layers, 32 dimensions and a 300-token vocabulary (a byte-level BPE trained on
# 200 IMDb reviews), with random weights. Two copies with the same seed are the same network:
# that is the situation at the start of DPO training, where $\pi_\theta = \pi_\text{ref}$.

# %%
reviews = [review.text[:300] for review in data.load_imdb(n=200, verbose=False)]
tokenizer = models.train_tokenizer(reviews, vocab_size=300)
shapes = ModelConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300)
ref_model = models.build_model(shapes, tokenizer, seed=0).eval()  # π_ref: frozen
policy = models.build_model(shapes, tokenizer, seed=0).eval()  # π_θ at step 0: the same weights
other_policy = models.build_model(shapes, tokenizer, seed=1).eval()  # a policy that differs from π_ref
print(f"{sum(p.numel() for p in policy.parameters()):,} parameters, vocabulary of {len(tokenizer)} tokens")

# %% [markdown]
# Three preference pairs. `encode_pairs` lays out chosen and rejected responses in one batch
# (rows 0–2 chosen, rows 3–5 rejected, as DPO trainers do to share one forward pass). Each row
# is `[pads | prompt | response | pads]`: prompts are **left**-padded so that every response
# starts in the same column, responses **right**-padded. Two masks come with it:
# `attention_mask` (1 on real tokens) and `response_mask` (1 on response tokens only).

# %%
prompts = ["This movie was", "I watched it and", "The acting"]
chosen = [" a delight from start to finish.", " loved every minute.", " is superb."]
rejected = [" a waste of two hours.", " fell asleep.", " is wooden."]
batch = models.encode_pairs(tokenizer, prompts + prompts, chosen + rejected)

for name in ("input_ids", "attention_mask", "response_mask"):
    print(f"{name:>15} {batch[name].shape}: row 2 = {batch[name][2].tolist()}")
print("row 2 as tokens:", [tokenizer.decode([i]) for i in batch["input_ids"][2]])

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 2

# %% [markdown]
# **Q1 · Next-token log-probabilities (2 points).** A causal LM returns `logits` of shape
# `[batch, length, vocab]`, and the logits at position $t$ are the model's prediction for the
# token at position $t + 1$. So the log-probability of the token `input_ids[:, t + 1]` is read
# from `log_softmax(logits[:, t])` — the **boundary shift**: the first token has no prediction,
# and the last logits predict a token that does not exist.
#
# $$\text{out}_{b,t} = \log \operatorname{softmax}(z_{b,t})_{\,i_{b,t+1}}, \qquad t = 0, \dots, L - 2,$$
#
# where $z$ are the `logits` and $i$ the `input_ids`.
#
# Implement `token_logps(logits, input_ids)`, returning a `[batch, length − 1]` tensor in
# **float32**: convert the logits with `.float()` *before* the log-softmax (over a 50,000-token
# vocabulary, a bfloat16 log-softmax keeps about 3 significant digits, and a sum over dozens of
# tokens drowns the small differences DPO lives on). Useful: `torch.log_softmax(x, dim=-1)`,
# `x.gather(-1, index[..., None]).squeeze(-1)` picks `x[..., index]` position by position.

# %% [raw]
# # BEGIN SOLUTION

# %%
def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log π(input_ids[:, t+1] | input_ids[:, ≤t]) for t = 0 … L−2, in float32: shape [batch, L − 1]."""
    # BEGIN SOLUTION
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts token t + 1
    return logps.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand: one row of 3 tokens over a vocabulary of 3
_logits = torch.log(torch.tensor([[[1.0, 2.0, 1.0], [1.0, 1.0, 2.0], [5.0, 5.0, 5.0]]]))  # softmax: ¼ ½ ¼, ¼ ¼ ½
_ids = torch.tensor([[0, 1, 0]])  # token 1 is predicted by position 0 (p = ½), token 0 by position 1 (p = ¼)
_out = token_logps(_logits, _ids)
assert _out.shape == (1, 2), "one log-prob per predicted token: shape [batch, length − 1]"
assert torch.allclose(_out, torch.log(torch.tensor([[0.5, 0.25]])))

# %%
# float32 out, whatever the logits' dtype
_out = token_logps(torch.zeros(2, 4, 5, dtype=torch.bfloat16), torch.zeros(2, 4, dtype=torch.long))
assert _out.dtype == torch.float32 and _out.shape == (2, 3)
assert torch.allclose(_out, torch.full((2, 3), -math.log(5)))

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# bfloat16 logits over a large vocabulary: the log-softmax must be taken in float32
_gen = torch.Generator().manual_seed(0)
_logits = (4 * torch.randn(2, 6, 5000, generator=_gen)).to(torch.bfloat16)
_ids = torch.randint(5000, (2, 6), generator=_gen)
_expected = torch.log_softmax(_logits[:, :-1].float(), -1).gather(-1, _ids[:, 1:, None]).squeeze(-1)
assert torch.allclose(token_logps(_logits, _ids), _expected, atol=1e-5)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals the library's log-probabilities of the tiny GPT-2 (float64 logits in, float32 out)
_ids, _mask = batch["input_ids"], batch["attention_mask"]
_logits = policy(input_ids=_ids, attention_mask=_mask, position_ids=models.position_ids_from_mask(_mask)).logits
_out = token_logps(_logits.double(), _ids)
assert _out.dtype == torch.float32 and _out.shape == (6, _ids.shape[1] - 1)
_library = models.response_logps(policy, batch)  # at the response tokens
assert torch.allclose(_out[_library.mask], _library.logps[_library.mask], atol=1e-5)
_expected = torch.log_softmax(_logits[:, :-1].float(), -1).gather(-1, _ids[:, 1:, None]).squeeze(-1)
assert torch.allclose(_out, _expected, atol=1e-5)  # and at every position

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 3

# %% [markdown]
# **Q2 · Sequence log-probabilities (3 points).** Now sum the token log-probabilities over the
# response tokens of each row, and over nothing else:
#
# $$\log \pi(y \mid x) = \sum_{t=1}^{L-1} m_{b,t} \, \log \pi(i_{b,t} \mid i_{b,<t}),$$
#
# where $m$ is the `response_mask` and $i$ the `input_ids` of row $b$.
#
# Careful with the indices: `token_logps(...)[:, t − 1]` scores the token in column $t$, so the
# mask that goes with it is `response_mask[:, 1:]`. The prompt's tokens are conditioned on, not
# scored; the padding is neither conditioned on nor scored.
#
# The forward pass is given. Its `position_ids` handle the left padding: GPT-2's position
# embeddings are absolute, so in `<pad> <pad> The movie` the word "The" must sit at position 0,
# as if there were no padding (`models.position_ids_from_mask` counts the real tokens). Without
# them, the same pair would score differently depending on how much it is padded.
#
# Target: your `response_logps` equals the library's `models.response_logps` on `batch` to 1e-5.

# %% [raw]
# # BEGIN SOLUTION

# %%
def response_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor) -> torch.Tensor:
    """log π(y|x): the sum of the response tokens' log-probabilities, one float32 number per row."""
    position_ids = models.position_ids_from_mask(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    # BEGIN SOLUTION
    scored = response_mask[:, 1:].bool()  # column t + 1 is scored by the logits at column t
    return torch.where(scored, token_logps(logits, input_ids), 0.0).sum(-1)
    # END SOLUTION


response_logps(ref_model, **batch)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# the library's answer on the batch above, to 1e-5
_mine = response_logps(ref_model, **batch)
assert _mine.shape == (6,), "one log-probability per row"
assert torch.allclose(_mine, models.response_logps(ref_model, batch).sequence_logps, atol=1e-5)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# another model and a batch with more padding on both sides
_batch = models.encode_pairs(tokenizer, ["A", "Honestly, the best film", "It"],
                             [" rocks.", " ever", " was long, slow and very dull, I am sorry to say."])
_mine = response_logps(other_policy, **_batch)
assert _mine.dtype == torch.float32
assert torch.allclose(_mine, models.response_logps(other_policy, _batch).sequence_logps, atol=1e-5)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# padding changes nothing: a pair scores the same alone as inside a padded batch
_alone = models.encode_pairs(tokenizer, ["It"], [" is superb."])
_padded = models.encode_pairs(tokenizer, ["It", "I really did not expect much from"], [" is superb.", " it, yet"])
assert torch.allclose(response_logps(other_policy, **_alone)[0], response_logps(other_policy, **_padded)[0],
                      atol=1e-5)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the boundary: a one-token response is scored by the logits at the prompt's last token
_prompt_ids = tokenizer("The film", add_special_tokens=False)["input_ids"]
_token = tokenizer(" is", add_special_tokens=False)["input_ids"][:1]
_one = models.encode_pairs(tokenizer, [_prompt_ids], [_token])
_logits = other_policy(input_ids=torch.tensor([_prompt_ids])).logits[0, -1]
_expected = torch.log_softmax(_logits.float(), -1)[_token[0]]
assert torch.allclose(response_logps(other_policy, **_one), _expected.reshape(1), atol=1e-5)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# an empty response has log-probability 0 (the prompt is not scored)
_empty = models.encode_pairs(tokenizer, ["This movie was", "It"], [" good.", ""])
assert abs(response_logps(other_policy, **_empty)[1].item()) < 1e-6

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 2

# %% [markdown]
# **Q3 · The DPO loss (2 points).** With the implicit rewards
# $\hat r_w = \beta\,(\log \pi_\theta(y_w|x) - \log \pi_\text{ref}(y_w|x))$ and
# $\hat r_l = \beta\,(\log \pi_\theta(y_l|x) - \log \pi_\text{ref}(y_l|x))$,
#
# $$\mathcal{L}_\text{DPO} = -\frac{1}{N} \sum_{i=1}^{N} \log \sigma\!\left(\hat r_{w,i} - \hat r_{l,i}\right).$$
#
# Implement `dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
# ref_rejected_logps, beta)`: four 1-D tensors of sequence log-probabilities (one entry per pair)
# in, the mean loss (a 0-dimensional tensor) out. Use `torch.nn.functional.logsigmoid`, which is
# stable for large margins (assignment 1 shows how).
#
# Two values to reach. When $\pi_\theta = \pi_\text{ref}$ both log-ratios are 0, so the loss is
# $-\log \sigma(0) = \log 2 \approx 0.6931$, whatever the pairs: **every DPO run starts at
# $\log 2$**. And with $\beta = 0.1$, a chosen log-ratio of $+2$ and a rejected one of $-3$, the
# margin is $0.1 \cdot 5 = 0.5$ and the loss $\log(1 + e^{-0.5}) \approx 0.4741$.

# %% [raw]
# # BEGIN SOLUTION

# %%
def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean −log σ(β (log-ratio of chosen − log-ratio of rejected)) over the pairs (DPO paper, Eq. 7)."""
    # BEGIN SOLUTION
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)  # r̂_w
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)  # r̂_l
    return -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards).mean()
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# policy = reference: log 2, whatever the log-probabilities
_logps = torch.tensor([-12.0, -30.5, -7.25])
_loss = dpo_loss(_logps, _logps - 3.0, _logps, _logps - 3.0, beta=0.1)
assert _loss.dim() == 0, "dpo_loss returns one number (a 0-dimensional tensor): the MEAN over pairs"
assert abs(_loss.item() - math.log(2)) < 1e-6

# %%
# by hand: β = 0.1, chosen log-ratio +2, rejected log-ratio −3 → loss log(1 + e^−0.5)
_loss = dpo_loss(torch.tensor([-8.0]), torch.tensor([-13.0]), torch.tensor([-10.0]), torch.tensor([-10.0]), beta=0.1)
assert abs(_loss.item() - math.log1p(math.exp(-0.5))) < 1e-6

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals the library's sigmoid loss for several β
from dpo_edu.losses import dpo_loss as _library_dpo_loss

_gen = torch.Generator().manual_seed(1)
_four = [-20 * torch.rand(8, generator=_gen, dtype=torch.float64) for _ in range(4)]
for _beta in (0.05, 0.5, 2.0):
    assert torch.isclose(dpo_loss(*_four, beta=_beta), _library_dpo_loss(*_four, beta=_beta)[0], rtol=1e-10)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# stable for huge margins: a right margin of 1,000 costs 0, a wrong one costs 1,000 (not inf)
_zero = torch.zeros(1)
assert abs(dpo_loss(torch.tensor([1e4]), _zero, _zero, _zero, beta=0.1).item()) < 1e-6
assert math.isclose(dpo_loss(_zero, torch.tensor([1e4]), _zero, _zero, beta=0.1).item(), 1000.0, rel_tol=1e-6)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the gradient is the paper's (§4): ∂L/∂log π_θ(y_w|x) = −β σ(r̂_l − r̂_w) / N
_gen = torch.Generator().manual_seed(2)
_pc, _pr, _rc, _rr = [-10 * torch.rand(5, generator=_gen, dtype=torch.float64) for _ in range(4)]
_pc = _pc.requires_grad_()
dpo_loss(_pc, _pr, _rc, _rr, beta=0.3).backward()
_weight = torch.sigmoid(0.3 * (_pr - _rr) - 0.3 * (_pc.detach() - _rc))
assert torch.allclose(_pc.grad, -0.3 * _weight / 5, rtol=1e-10)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q4
# points: 2

# %% [markdown]
# **Q4 · The loss of a batch (2 points).** Put the pieces together:
# `dpo_batch_loss(policy, ref_model, batch, beta)` scores the whole batch with each model (one
# forward pass each: rows `:n` are the chosen responses, rows `n:` the rejected ones, with
# `n = len(batch["input_ids"]) // 2`) and returns the DPO loss. The reference is frozen: compute
# its log-probabilities under `torch.no_grad()`, so that the gradient reaches the policy only.
#
# Run it on `policy` (at step 0, identical to `ref_model`): you should read exactly $\log 2$.

# %% [raw]
# # BEGIN SOLUTION

# %%
def dpo_batch_loss(policy, ref_model, batch: dict, beta: float) -> torch.Tensor:
    """The DPO loss of ``policy`` against ``ref_model`` on a batch of chosen rows then rejected rows."""
    # BEGIN SOLUTION
    n = len(batch["input_ids"]) // 2
    policy_logps = response_logps(policy, **batch)
    with torch.no_grad():
        ref_logps = response_logps(ref_model, **batch)
    return dpo_loss(policy_logps[:n], policy_logps[n:], ref_logps[:n], ref_logps[n:], beta)
    # END SOLUTION


loss_at_start = dpo_batch_loss(policy, ref_model, batch, beta=0.1)
print(f"DPO loss at step 0: {loss_at_start.item():.6f}   (log 2 = {math.log(2):.6f})")

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# π_θ = π_ref: log 2
assert abs(dpo_batch_loss(policy, ref_model, batch, beta=0.1).item() - math.log(2)) < 1e-6

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# a policy that differs from the reference: the library's loss on the library's log-probabilities
from dpo_edu.losses import dpo_loss as _library_dpo_loss

_pol = models.response_logps(other_policy, batch).sequence_logps.detach()
_ref = models.response_logps(ref_model, batch).sequence_logps.detach()
_expected = _library_dpo_loss(_pol[:3], _pol[3:], _ref[:3], _ref[3:], beta=0.5)[0]
assert torch.isclose(dpo_batch_loss(other_policy, ref_model, batch, beta=0.5).detach(), _expected, atol=1e-5)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the gradient reaches the policy and never the frozen reference
_pol_model = models.build_model(shapes, tokenizer, seed=1)
_ref_model = models.build_model(shapes, tokenizer, seed=0)
dpo_batch_loss(_pol_model, _ref_model, batch, beta=0.1).backward()
assert all(p.grad is None for p in _ref_model.parameters()), "compute the reference under torch.no_grad()"
assert _pol_model.transformer.wte.weight.grad.abs().sum() > 0

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# ## One step of DPO
#
# Your functions are all a trainer needs. One gradient step on a copy of the policy moves the
# loss below $\log 2$: the implicit reward margin $\hat r_w - \hat r_l$, zero at the start, turns
# positive as the policy raises the chosen responses relative to the rejected ones.

# %%
student_policy = copy.deepcopy(policy).train()
optimizer = torch.optim.SGD(student_policy.parameters(), lr=1.0)
for step in range(3):
    loss = dpo_batch_loss(student_policy, ref_model, batch, beta=0.1)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step}: loss {loss.item():.4f}")
with torch.no_grad():
    logratios = response_logps(student_policy, **batch) - response_logps(ref_model, **batch)
margins = 0.1 * (logratios[:3] - logratios[3:])
print(f"implicit reward margins after 3 steps: {margins.numpy().round(3)}")
