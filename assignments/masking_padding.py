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
# name: masking_padding
# requirements: gradescope-requirements.txt
# python_version: 3.11
# check_all_cell: true
# export_cell:
#     pdf: false
#     instructions: "Hand in this notebook (masking_padding.ipynb) as your instructor asks."
# generate:
#     pdf: false
#     show_hidden: true

# %% [markdown]
# # Assignment 5 · Padding and masking: what goes wrong
#
# *Companion of notebook 07. Points: 9 (Q1: 3, Q2: 2, Q3: 2, Q4: 2).*
#
# A batch is a rectangle; texts are not. Trainers fill the gaps with a padding token and pass
# three tensors that say what is what: the `attention_mask` (which tokens are real), the
# `response_mask` (which tokens are scored) and the `position_ids` (where each real token sits in
# its text). When one of them is wrong nothing crashes: the loss is computed, training runs, and
# the log-probabilities every loss reads,
#
# $$\log \pi(y \mid x) = \sum_{t=1}^{|y|} \log \pi(y_t \mid x, y_{<t}),$$
#
# are quietly off. Three classic slips:
#
# - **pad = EOS.** GPT-2 ships no padding token, and the usual fix,
#   `tokenizer.pad_token = tokenizer.eos_token`, makes every mask built as `input_ids != pad_id`
#   hide the real end-of-text tokens too: the EOS that ends a response is never scored, and the
#   model is never trained to stop.
# - **Left padding without position ids.** GPT-2's position embeddings are absolute: a
#   left-padded text is read as if it started later, and its log-probabilities change with the
#   amount of padding around it.
# - **Scoring the prompt.** $\log \pi(y \mid x)$ sums over the response only; a sum over every
#   real token adds the prompt's own log-probability to it.
#
# You will build a padded batch (Q1) and its position ids (Q2), score its responses (Q3), then
# measure what two of the slips cost and sort the setups that are right from those that are not
# (Q4). The course library has its own versions (`dpo_edu/models.py`: `encode_pairs`,
# `position_ids_from_mask`, `response_logps`); the hidden tests compare yours with them, so do not
# call them in your answers.
#
# **How to work.** Keep this file's name (`masking_padding.ipynb`): the checks read their tests
# from it. Fill in every `...`, run the cell, then its `grader.check("q…")` cell. The public
# checks you see catch the usual slips; hidden tests (other inputs, edge cases) also count toward
# your grade. The tests name their own variables with a leading underscore, so they leave yours
# alone.

# %%
import torch

from dpo_edu import data, models
from dpo_edu.models import ModelConfig

torch.manual_seed(0)
torch.set_num_threads(1)  # these models are tiny: one CPU thread is the fastest

# %% [markdown]
# ## A tiny GPT-2 and its two special tokens
#
# As in assignment 2: a GPT-2 of 2 layers, 32 dimensions and a 300-token vocabulary (a byte-level
# BPE trained on 200 IMDb reviews), with random weights, built and seeded here in a second. Its
# tokenizer has an end-of-text token `<|endoftext|>` (EOS) and, unlike GPT-2's, a padding token
# of its own, `<|pad|>`, with another id.

# %%
reviews = [review.text[:300] for review in data.load_imdb(n=200, verbose=False)]
tokenizer = models.train_tokenizer(reviews, vocab_size=300)
shapes = ModelConfig(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300)
policy = models.build_model(shapes, tokenizer, seed=0).eval()
other_policy = models.build_model(shapes, tokenizer, seed=1).eval()  # another network, for the hidden tests
eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
print(f"EOS {tokenizer.eos_token!r} has id {eos}, the pad {tokenizer.pad_token!r} id {pad}")

# %% [markdown]
# Three (prompt, response) pairs as lists of token ids, each response ending with EOS as DPO
# trainers' do (`append_eos`). The library's `encode_pairs` lays them out in one batch, `batch`:
# the layout Q1 asks you to build.

# %%
prompts = ["This movie was", "I watched it and", "A"]
responses = [" a delight from start to finish.", " fell asleep.", " rocks."]
prompt_ids = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
response_ids = [tokenizer(response, add_special_tokens=False)["input_ids"] + [eos] for response in responses]
print("prompt lengths", [len(ids) for ids in prompt_ids], "response lengths", [len(ids) for ids in response_ids])

batch = models.encode_pairs(tokenizer, prompt_ids, response_ids)
for name in ("input_ids", "attention_mask", "response_mask"):
    print(f"{name:>15} {tuple(batch[name].shape)}: row 2 = {batch[name][2].tolist()}")

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 3

# %% [markdown]
# **Q1 · A left-padded batch (3 points).** Lay out $B$ pairs as DPO trainers do, one row a pair:
#
# `[pads | prompt | response | pads]`, of width $P + R$,
#
# with $P$ the length of the longest prompt and $R$ of the longest response. Prompts are padded on
# the **left**, so that every response starts in column $P$ (the last prompt token of every row
# sits in column $P - 1$, where generation appends the next token), responses on the **right**.
# With $p_b$ and $r_b$ the lengths of row $b$'s prompt and response, the two masks are
#
# $$a_{b,t} = [\,P - p_b \le t < P + r_b\,], \qquad m_{b,t} = [\,P \le t < P + r_b\,],$$
#
# $a$ the `attention_mask` (1 on the real tokens, prompt and response) and $m$ the
# `response_mask` (1 on the response tokens, the ones scored).
#
# Implement `encode_rows(prompts, responses, pad_id)`: two lists of $B$ lists of token ids and the
# pad's id in, the dict `{"input_ids": …, "attention_mask": …, "response_mask": …}` of three
# `torch.long` tensors of shape $[B, P + R]$ out. Two rules:
#
# - **Masks come from the lengths, never from the ids.** `attention_mask = (input_ids != pad_id)`
#   looks the same, and is, until someone pads with EOS: then it hides every EOS that ends a
#   response. An EOS in a response is a real token, in both masks, whatever `pad_id` is.
# - **A prompt has at least one token:** the first response token is scored by the logits of the
#   last prompt token, so raise a `ValueError` on an empty prompt. An empty response is allowed
#   (a row with nothing to score).
#
# By hand, with `pad_id = 1` and `0` the EOS: the prompts `[[5, 6, 7], [8]]` and the responses
# `[[9], [10, 11, 0]]` make
#
# ```text
# input_ids       [[5, 6, 7,  9,  1, 1], [1, 1, 8, 10, 11, 0]]
# attention_mask  [[1, 1, 1,  1,  0, 0], [0, 0, 1,  1,  1, 1]]
# response_mask   [[0, 0, 0,  1,  0, 0], [0, 0, 0,  1,  1, 1]]
# ```

# %% [raw]
# # BEGIN SOLUTION

# %%
def encode_rows(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows [pads | prompt | response | pads]: input_ids, attention_mask, response_mask, each [B, P + R]."""
    # BEGIN SOLUTION
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs a token: its last one's logits score the first response token")
    width_p, width_r = max(map(len, prompts)), max(map(len, responses))  # P, R
    ids, attention, scored = [], [], []
    for prompt, response in zip(prompts, responses):
        left, right = width_p - len(prompt), width_r - len(response)
        ids.append([pad_id] * left + list(prompt) + list(response) + [pad_id] * right)
        attention.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)  # from lengths
        scored.append([0] * width_p + [1] * len(response) + [0] * right)
    return {"input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
            "response_mask": torch.tensor(scored, dtype=torch.long)}
    # END SOLUTION


encode_rows([[5, 6, 7], [8]], [[9], [10, 11, 0]], pad_id=1)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand: pad 1, EOS 0
_out = encode_rows([[5, 6, 7], [8]], [[9], [10, 11, 0]], pad_id=1)
assert isinstance(_out, dict) and {"input_ids", "attention_mask", "response_mask"} <= set(_out), \
    "return a dict with the keys input_ids, attention_mask, response_mask"
for _name in ("input_ids", "attention_mask", "response_mask"):
    assert _out[_name].shape == (2, 6) and _out[_name].dtype == torch.long, f"{_name}: a torch.long tensor [B, P + R]"
assert _out["input_ids"].tolist() == [[5, 6, 7, 9, 1, 1], [1, 1, 8, 10, 11, 0]], "prompts left-padded, responses right-padded"
assert _out["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
assert _out["response_mask"].tolist() == [[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1]]

# %%
# the pairs above: shape [3, P + R], every response starts in column P, and each EOS is in both masks
_out = encode_rows(prompt_ids, response_ids, pad)
_p, _r = max(map(len, prompt_ids)), max(map(len, response_ids))
assert _out["input_ids"].shape == _out["attention_mask"].shape == _out["response_mask"].shape == (3, _p + _r)
assert (_out["response_mask"][:, _p] == 1).all() and (_out["response_mask"][:, :_p] == 0).all()
_eos = _out["input_ids"] == eos
assert _eos.sum() == 3 and (_out["attention_mask"][_eos] == 1).all() and (_out["response_mask"][_eos] == 1).all()

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# equals the library's batch: a one-token prompt, a row without any padding (longest prompt and response), EOS endings
_p = [tokenizer(_t, add_special_tokens=False)["input_ids"] for _t in ("A", "I really did not expect much from", "The acting")]
_r = [tokenizer(_t, add_special_tokens=False)["input_ids"] + [eos] for _t in (" rocks.", " it, yet it won me over.", " is wooden.")]
_out = encode_rows(_p, _r, pad)
_expected = models.encode_pairs(tokenizer, _p, _r)
for _name in ("input_ids", "attention_mask", "response_mask"):
    assert _out[_name].dtype == torch.long and torch.equal(_out[_name], _expected[_name]), _name
assert _out["attention_mask"][1].all(), "row 1 fills the batch: no padding"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# pad = EOS: the masks are the same as with a distinct pad, every real EOS still attended and scored
_p, _r = [[5, 6, 7], [8], [9, 10]], [[11, eos], [12, 13, 14, eos], [eos]]
_trap, _right = encode_rows(_p, _r, pad_id=eos), encode_rows(_p, _r, pad_id=pad)
assert torch.equal(_trap["attention_mask"], _right["attention_mask"]), "build the masks from the lengths, not from the ids"
assert torch.equal(_trap["response_mask"], _right["response_mask"]), "build the masks from the lengths, not from the ids"
assert _trap["response_mask"].sum() == 2 + 4 + 1
_real = _right["attention_mask"].bool()
assert torch.equal(_trap["input_ids"][_real], _right["input_ids"][_real]) and (_trap["input_ids"][~_real] == eos).all()
assert torch.equal(_right["input_ids"], models.encode_pairs(tokenizer, _p, _r)["input_ids"])

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# an empty prompt is an error; an empty response a row with nothing to score; one pair needs no padding
try:
    encode_rows([[5], []], [[6], [7]], pad_id=pad)
except ValueError:
    pass
else:
    raise AssertionError("an empty prompt must raise a ValueError: no logits would score the first response token")
_out = encode_rows([[5, 6], [7]], [[8, eos], []], pad_id=pad)
_expected = models.encode_pairs(tokenizer, [[5, 6], [7]], [[8, eos], []])
assert all(torch.equal(_out[_name], _expected[_name]) for _name in _expected) and _out["response_mask"][1].sum() == 0
_out = encode_rows([[5, 6]], [[7, eos]], pad_id=pad)
assert _out["input_ids"].tolist() == [[5, 6, 7, eos]] and _out["attention_mask"].tolist() == [[1, 1, 1, 1]]
assert _out["response_mask"].tolist() == [[0, 0, 1, 1]]

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 2

# %% [markdown]
# **Q2 · Position ids for left padding (2 points).** GPT-2 adds to each token's embedding a
# learned embedding of its **position**, $h^{(0)}_{b,t} = W_e[\,i_{b,t}\,] + W_p[\,\text{pos}_{b,t}\,]$,
# and these positions are absolute. Called without `position_ids`, it takes the column,
# $\text{pos}_{b,t} = t$: in `<pad> <pad> The movie`, "The" is read at position 2, as if two
# tokens preceded it, and every logit of the row depends on how much padding the batch gave it.
# The attention mask keeps the pads out of attention; it does nothing for positions. The fix is
# to count the real tokens:
#
# $$\text{pos}_{b,t} = \max\Big(\sum_{s \le t} a_{b,s} - 1,\ 0\Big),$$
#
# with $a$ the attention mask: each row's first real token sits at position 0, the next at 1, …,
# as if the row were unpadded. The pads on the left get $\max(-1, 0) = 0$, those on the right the
# last real position: they are masked, so they are never read, and any valid position would do
# (the tests check the real tokens' positions exactly, and that the pads' lie in $[0, L)$).
#
# Implement `positions_from_mask(attention_mask)`: a `[B, L]` tensor of 0s and 1s in, the `[B, L]`
# `torch.long` position ids out, with `torch.cumsum` and no loop. By hand, the mask
# `[[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]` gives
# `[[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 1, 1, 1]]`.
#
# The second check is the point of it all, on the tiny GPT-2: a left-padded row's logits at its
# real tokens must equal, to 1e-5, those of the same text alone (unpadded) when your position ids
# are passed; without them they differ (by about 0.4 here).

# %% [raw]
# # BEGIN SOLUTION

# %%
def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position among the real tokens of its row (pads: a valid position, 0 on the left)."""
    # BEGIN SOLUTION
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    # END SOLUTION


positions_from_mask(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]]))

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# by hand: exact at the real tokens, a valid position at the pads
_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
_pos = positions_from_mask(_mask)
assert _pos.shape == (3, 5) and _pos.dtype == torch.long, "position ids: a torch.long tensor shaped like the mask"
_expected = torch.tensor([[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 1, 1, 1]])
assert torch.equal(_pos[_mask.bool()], _expected[_mask.bool()]), f"got {_pos.tolist()}: count the real tokens"
assert ((_pos >= 0) & (_pos < 5)).all(), f"got {_pos.tolist()}: clamp the pads to a valid position"

# %%
# with your position ids, a left-padded row's logits are those of its text alone; without them, they are not
_alone = models.encode_pairs(tokenizer, ["It"], [" is superb."])  # one row: no padding
_padded = models.encode_pairs(tokenizer, ["It", "I really did not expect much from"], [" is superb.", " it, yet"])
_real = _padded["attention_mask"][0].bool()  # row 0: 26 pads on its left
with torch.no_grad():
    _expected = policy(input_ids=_alone["input_ids"], attention_mask=_alone["attention_mask"]).logits[0]
    _logits = policy(input_ids=_padded["input_ids"], attention_mask=_padded["attention_mask"],
                     position_ids=positions_from_mask(_padded["attention_mask"])).logits[0, _real]
    _default = policy(input_ids=_padded["input_ids"], attention_mask=_padded["attention_mask"]).logits[0, _real]
assert torch.allclose(_logits, _expected, atol=1e-5), \
    f"the padded row differs from the unpadded one by {(_logits - _expected).abs().max():.3g}"
assert (_default - _expected).abs().max() > 0.01  # GPT-2's default positions shift the padded row

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the library's positions at the real tokens, valid ones at the pads: no padding, one real token, left and right pads
_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]])
_batch = models.encode_pairs(tokenizer, ["A", "I really did not expect much from", "The acting"],
                             [" rocks.", " it, yet it won me over.", ""], append_eos=True)
for _m in (_mask, _batch["attention_mask"]):
    _pos = positions_from_mask(_m)
    assert _pos.shape == _m.shape and _pos.dtype == torch.long
    assert torch.equal(_pos[_m.bool()], models.position_ids_from_mask(_m)[_m.bool()])
    assert ((_pos >= 0) & (_pos < _m.shape[1])).all()

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# another network: the same text gets the same logits under 0, 3 and 9 pads on its left
_ids = tokenizer("The acting is wooden.", add_special_tokens=False)["input_ids"]
_rows = []
for _left in (0, 3, 9):
    _input = torch.tensor([[pad] * _left + _ids])
    _mask = torch.tensor([[0] * _left + [1] * len(_ids)])
    with torch.no_grad():
        _rows.append(other_policy(input_ids=_input, attention_mask=_mask,
                                  position_ids=positions_from_mask(_mask)).logits[0, _left:])
assert torch.allclose(_rows[0], _rows[1], atol=1e-5) and torch.allclose(_rows[0], _rows[2], atol=1e-5)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 2

# %% [markdown]
# **Q3 · log π(y|x) of a padded batch (2 points).** Now score each row's response, and nothing
# else:
#
# $$\log \pi(y_b \mid x_b) = \sum_{t=1}^{L-1} m_{b,t}\, \log \operatorname{softmax}(z_{b,t-1})_{\,i_{b,t}},$$
#
# with $z$ the logits of one forward pass that gets the attention mask **and** your position ids
# (Q2), $i$ the `input_ids` and $m$ the `response_mask`. The boundary shift of assignment 2 still
# holds: the logits in column $t - 1$ score the token in column $t$, so the mask that goes with
# `log_softmax(logits[:, :-1])` is `response_mask[:, 1:]`; and the log-softmax is taken in float32
# (`.float()` first). Neither the pads nor the prompt are scored; the EOS that ends a response is,
# like any response token.
#
# Implement `sequence_logps(model, batch, use_positions=True)`: a batch laid out as `encode_rows`
# makes it in, one float32 log-probability per row out (shape `[B]`). With `use_positions=False`,
# leave `position_ids` out of the forward pass, so that GPT-2 takes its default positions: that is
# the slip Q4 measures. Useful: `model(input_ids=…, attention_mask=…, position_ids=…).logits`,
# `torch.log_softmax(x, dim=-1)`, `x.gather(-1, index[..., None]).squeeze(-1)`.
#
# Target: `sequence_logps(policy, batch)` equals the library's
# `models.response_logps(policy, batch).sequence_logps` to 1e-5.

# %% [raw]
# # BEGIN SOLUTION

# %%
def sequence_logps(model, batch: dict[str, torch.Tensor], use_positions: bool = True) -> torch.Tensor:
    """log π(y|x) of each row: its response tokens' log-probabilities summed, in float32, shape [B]."""
    # BEGIN SOLUTION
    ids, attention = batch["input_ids"], batch["attention_mask"]
    positions = positions_from_mask(attention) if use_positions else None  # None: GPT-2's 0, 1, …, L − 1
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.where(batch["response_mask"][:, 1:].bool(), logps, 0.0).sum(-1)  # column t scores token t + 1
    # END SOLUTION


sequence_logps(policy, batch)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# the library's answer on the batch above, to 1e-5
_mine = sequence_logps(policy, batch)
assert _mine.shape == (3,), "one log-probability per row"
assert _mine.dtype == torch.float32, "float32: take the log-softmax of logits.float()"
assert torch.allclose(_mine, models.response_logps(policy, batch).sequence_logps, atol=1e-5), \
    f"got {_mine.tolist()}, expected {models.response_logps(policy, batch).sequence_logps.tolist()}"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# another network, another batch: responses ending with EOS, a one-token prompt, a row without padding
_batch = models.encode_pairs(tokenizer, ["A", "I really did not expect much from", "The acting"],
                             [" rocks.", " it, yet it won me over.", " is wooden."], append_eos=True)
_mine = sequence_logps(other_policy, _batch)
assert _mine.dtype == torch.float32 and _mine.shape == (3,)
assert torch.allclose(_mine, models.response_logps(other_policy, _batch).sequence_logps, atol=1e-5)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# padding changes nothing: a pair scores the same alone as in a batch that pads it on both sides
_prompt = tokenizer("A", add_special_tokens=False)["input_ids"]  # one token
_response = tokenizer(" rocks.", add_special_tokens=False)["input_ids"] + [eos]
_alone = models.encode_pairs(tokenizer, [_prompt], [_response])
_padded = models.encode_pairs(tokenizer, [_prompt, tokenizer("Honestly, the best film", add_special_tokens=False)["input_ids"]],
                              [_response, tokenizer(" was long, slow and very dull.", add_special_tokens=False)["input_ids"]])
assert torch.allclose(sequence_logps(other_policy, _alone)[0], sequence_logps(other_policy, _padded)[0], atol=1e-5)

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# use_positions=False: GPT-2's default positions, right on the row without left padding, wrong on the others
_ids, _mask, _scored = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
with torch.no_grad():
    _logits = other_policy(input_ids=_ids, attention_mask=_mask).logits
_logps = torch.log_softmax(_logits[:, :-1].float(), -1).gather(-1, _ids[:, 1:, None]).squeeze(-1)
_expected = torch.where(_scored[:, 1:].bool(), _logps, 0.0).sum(-1)
_mine = sequence_logps(other_policy, batch, use_positions=False)
assert torch.allclose(_mine, _expected, atol=1e-5)
_right = models.response_logps(other_policy, batch).sequence_logps
assert abs(_mine[0] - _right[0]) < 1e-4 and ((_mine[1:] - _right[1:]).abs() > 1e-3).all()

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# an empty response has log-probability 0: the prompt is not scored
_batch = models.encode_pairs(tokenizer, ["The", "A"], [" is", ""])
_mine = sequence_logps(policy, _batch)
assert abs(_mine[1].item()) < 1e-6
assert torch.allclose(_mine, models.response_logps(policy, _batch).sequence_logps, atol=1e-5)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q4
# points: [0, 1, 0, 1]

# %% [markdown]
# **Q4 · What the slips cost (2 points).** Measure two slips on `batch` with your
# `sequence_logps`, each as a difference *slipped − right*, one number per row (shape `[3]`):
#
# - `cost_prompt`: the prompt scored too, that is the `attention_mask` used as the response mask
#   (`{**batch, "response_mask": batch["attention_mask"]}` is that batch). The difference is the
#   log-probability of the prompt tokens that mask lets in. In row 0, which has no padding, those
#   from the second on, $\log \pi(x_{2:} \mid x_1)$: no logits score column 0. In a left-padded
#   row, all of them, the first one "predicted" by the logits of a pad, which predict nothing.
#   Never positive, more negative the longer the prompt, and even row 2's one-token prompt costs.
#   A loss or a KL estimate built on it counts the prompt as the policy's own text.
# - `cost_positions`: GPT-2's default positions instead of yours (`use_positions=False`). Row 0
#   has no left padding, so its columns are its positions: it costs nothing. The other rows do.
#
# Then set `correct_setups` to the set of letters of the setups below that give every row its
# right $\log \pi(y \mid x)$, for example `{"b", "e"}`. The pad is distinct from EOS unless said
# otherwise, and the sum runs over `response_mask[:, 1:]` with `logits[:, :-1]`, as in Q3.
#
# - **a.** Left padding, the attention mask and your position ids (Q2).
# - **b.** Left padding, the attention mask, GPT-2's default positions.
# - **c.** Right padding of the whole row, `[prompt | response | pads]` (so each response starts
#   in its own column), the attention mask, GPT-2's default positions.
# - **d.** Left padding with pad = EOS, both masks built as `input_ids != pad_id`, your position
#   ids, responses that end with EOS.
# - **e.** Left padding, your position ids, and no `attention_mask` passed to the model.
#
# (You can check each of them numerically with a few lines and your functions.)

# %% [raw]
# # BEGIN SOLUTION

# %%
with torch.no_grad():
    right = sequence_logps(policy, batch)
    cost_prompt = sequence_logps(policy, {**batch, "response_mask": batch["attention_mask"]}) - right  # SOLUTION
    cost_positions = sequence_logps(policy, batch, use_positions=False) - right  # SOLUTION
print("prompt scored too:", cost_prompt)
print("default positions:", cost_positions)

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN SOLUTION

# %%
correct_setups = {"a", "c"}  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
# one number per row; scoring the prompt lowers every row's log π; default positions cost only the padded rows
assert cost_prompt.shape == cost_positions.shape == (3,), "one difference per row of batch"
assert (cost_prompt < -0.1).all(), "scoring the prompt too adds its log-probabilities (< 0), even row 2's one token"
assert abs(cost_positions[0]) < 1e-4, "row 0 has no left padding: its columns are its positions"
assert (cost_positions[1:].abs() > 1e-3).all(), "rows 1 and 2 are left-padded: default positions shift them"

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
# the library's costs: the prompt's log-probability from its second token on, and the default-position error
_right = models.response_logps(policy, batch).sequence_logps.detach()
_prompt_too = batch["attention_mask"].clone()
_prompt_too[:, 0] = 0  # column 0 is never scored: no logits predict it
_expected = models.response_logps(policy, {**batch, "response_mask": _prompt_too}).sequence_logps.detach() - _right
assert torch.allclose(torch.as_tensor(cost_prompt).detach(), _expected, atol=1e-4)
assert (_expected < -1.0).all()
_ids, _mask, _scored = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
with torch.no_grad():
    _logits = policy(input_ids=_ids, attention_mask=_mask).logits
_logps = torch.log_softmax(_logits[:, :-1].float(), -1).gather(-1, _ids[:, 1:, None]).squeeze(-1)
_expected = torch.where(_scored[:, 1:].bool(), _logps, 0.0).sum(-1) - _right
assert torch.allclose(torch.as_tensor(cost_positions).detach(), _expected, atol=1e-4)

# %%
assert isinstance(correct_setups, set) and correct_setups <= {"a", "b", "c", "d", "e"}, \
    'write a set of letters, for example {"b", "e"}'

# %%
""" # BEGIN TEST CONFIG
hidden: true
""" # END TEST CONFIG
assert correct_setups == {"a", "c"}

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [markdown]
# **Going further.** Check **c** numerically: build the rows `[prompt | response | pads]` of
# `batch`'s pairs yourself and score them without position ids. Since right padding needs no
# position ids, why do trainers left-pad at all? (Think of generation, which appends one column to
# every row at each step.) And in **d**, what does a model trained with those masks learn about
# stopping?
