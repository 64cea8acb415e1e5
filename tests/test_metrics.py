"""Metrics on hand-made accuracy matrices."""
import pytest

from packnet_edu.metrics import (average_accuracy, backward_transfer, capacity_shares,
                                 forgetting_per_task)

R = [[90.0, None, None],
     [70.0, 80.0, None],
     [60.0, 75.0, 95.0]]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert average_accuracy(R) == pytest.approx((60 + 75 + 95) / 3)


def test_backward_transfer_by_hand():
    # ((60 - 90) + (75 - 80)) / 2 = -17.5
    assert backward_transfer(R) == pytest.approx(-17.5)
    assert forgetting_per_task(R) == [30.0, 5.0, 0.0]


def test_no_forgetting_gives_zero_and_joint_gives_none():
    same = [[90.0, None], [90.0, 80.0]]
    assert backward_transfer(same) == 0.0
    assert backward_transfer([[90.0, 80.0]]) is None
    assert backward_transfer([[50.0, None], [60.0, 70.0]]) == pytest.approx(10.0)   # positive transfer


def test_bad_matrices():
    with pytest.raises(ValueError):
        average_accuracy([])
    with pytest.raises(ValueError):
        average_accuracy([[1.0, None]])
    with pytest.raises(ValueError):
        backward_transfer([[1.0], [1.0, 2.0]])


def test_capacity_shares():
    owned = {"a": {1: 50, 2: 25, 0: 25}, "b": {1: 50, 2: 50}}
    assert capacity_shares(owned, 2) == pytest.approx([50.0, 37.5])
