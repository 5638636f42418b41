"""Tests for dpo_edu.validate: every check names the argument and, for tensors, where it fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpo_edu.validate import check_distribution, check_finite, check_int, check_positive, check_same_shape

# --------------------------------------------------------------------------- check_positive


@pytest.mark.parametrize("value", [1, 0.5, 1e-12, 3.0e8, np.float64(0.25)])
def test_check_positive_accepts_and_returns_float(value):
    """Finite numbers > 0 (ints, floats, NumPy float64) come back as Python floats of the same value."""
    out = check_positive("beta", value)
    assert type(out) is float and out == float(value)


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan"), float("inf"), -float("inf")])
def test_check_positive_rejects_non_positive_or_non_finite(value):
    """0, negatives, NaN and ±inf raise, naming the argument and echoing the value."""
    with pytest.raises(ValueError, match=rf"^lr must be a finite number > 0, got {value}$"):
        check_positive("lr", value)


@pytest.mark.parametrize("value, type_name", [(True, "bool"), ("0.1", "str"), (None, "NoneType")])
def test_check_positive_rejects_non_numbers(value, type_name):
    """Booleans, strings and None are refused by type, naming the argument and the type."""
    with pytest.raises(ValueError, match=rf"^beta must be a number, got {type_name}$"):
        check_positive("beta", value)


# --------------------------------------------------------------------------- check_finite


def test_check_finite_passes_finite_tensors_through():
    """A finite tensor is returned as the same object."""
    t = torch.tensor([[1.0, -2.0], [1e300, -1e-300]], dtype=torch.float64)
    assert check_finite("x", t) is t


def test_check_finite_names_argument_value_and_first_bad_index():
    """The error names the argument, the bad value and the first offending index (row-major)."""
    t = torch.zeros(3, 4)
    t[1, 2] = float("inf")
    t[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^logps has a non-finite value inf at index \(1, 2\)$"):
        check_finite("logps", t)
    v = torch.tensor([0.0, 1.0, -float("inf")])
    with pytest.raises(ValueError, match=r"^v has a non-finite value -inf at index \(2,\)$"):
        check_finite("v", v)


def test_check_finite_on_a_scalar_tensor():
    """A 0-d NaN tensor is reported with the empty index ()."""
    with pytest.raises(ValueError, match=r"^s has a non-finite value nan at index \(\)$"):
        check_finite("s", torch.tensor(float("nan")))


# --------------------------------------------------------------------------- check_same_shape


def test_check_same_shape_accepts_equal_shapes():
    """Equal shapes pass silently (and so does a single tensor)."""
    check_same_shape(a=torch.zeros(2, 3), b=torch.ones(2, 3), c=torch.empty(2, 3))
    check_same_shape(a=torch.zeros(5))


def test_check_same_shape_lists_every_argument_with_its_shape():
    """A mismatch lists each name with its shape, in the order given."""
    with pytest.raises(ValueError, match=r"^shapes must match, got chosen \(4,\), rejected \(4,\), ref \(4, 1\)$"):
        check_same_shape(chosen=torch.zeros(4), rejected=torch.zeros(4), ref=torch.zeros(4, 1))


# --------------------------------------------------------------------------- check_distribution


def test_check_distribution_accepts_rows_that_sum_to_one():
    """Rows (last dim) that are distributions pass, including zeros and sums off by < atol."""
    probs = torch.tensor([[0.2, 0.8, 0.0], [1 / 3, 1 / 3, 1 / 3 + 5e-6]], dtype=torch.float64)
    assert check_distribution("ref", probs) is probs


def test_check_distribution_names_the_row_that_does_not_sum_to_one():
    """The error names the argument, the offending row and its sum."""
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.7, 0.2]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^ref row \(2,\) sums to 0\.900000, not 1$"):
        check_distribution("ref", probs)
    batched = torch.full((2, 3, 2), 0.5, dtype=torch.float64)
    batched[1, 0] = torch.tensor([0.5, 0.6], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^policy row \(1, 0\) sums to 1\.100000, not 1$"):
        check_distribution("policy", batched)


def test_check_distribution_tolerance_is_atol():
    """A row off by 2e-5 fails at the default atol=1e-5 and passes with atol=1e-4."""
    probs = torch.tensor([[0.5, 0.5 + 2e-5]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"row \(0,\) sums to 1\.000020"):
        check_distribution("p", probs)
    check_distribution("p", probs, atol=1e-4)


def test_check_distribution_names_the_negative_entry():
    """A negative probability is reported with its value and index, before the row-sum check."""
    probs = torch.tensor([[0.5, 0.5], [1.2, -0.2]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^ref has a negative probability -0\.2 at index \(1, 1\)$"):
        check_distribution("ref", probs)


def test_check_distribution_rejects_non_finite_entries():
    """NaN entries are caught by the finiteness check, naming the argument and index."""
    probs = torch.tensor([[0.5, float("nan")]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^ref has a non-finite value nan at index \(0, 1\)$"):
        check_distribution("ref", probs)


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "4"])
def test_check_int_names_the_argument_and_the_bad_value(value):
    with pytest.raises(ValueError, match=rf"batch_size must be an int ≥ 1, got {value!r}"):
        check_int("batch_size", value, 1)


def test_check_int_returns_a_good_value():
    assert check_int("steps", 5, 1) == 5
