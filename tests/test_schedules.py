"""Learning-rate schedules, applied per step inside the compiled epoch loop."""
import math

import numpy as np
import pytest

import fastnn


def test_schedule_factors():
    assert [fastnn.Constant().factor(t, 10) for t in (0, 9)] == [1.0, 1.0]
    decay = fastnn.StepDecay(step_size=3, gamma=0.5)
    assert [decay.factor(t, 10) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    cos = fastnn.Cosine(warmup_steps=2, min_factor=0.1)
    assert cos.factor(0, 12) == pytest.approx(0.5) and cos.factor(1, 12) == pytest.approx(1.0)
    assert cos.factor(2, 12) == pytest.approx(1.0)
    assert cos.factor(7, 12) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos.factor(12, 12) == pytest.approx(0.1)


@pytest.mark.parametrize("schedule", [fastnn.StepDecay(step_size=4, gamma=0.5), fastnn.Cosine(warmup_steps=3)],
                         ids=repr)
def test_fit_with_a_schedule_equals_steps_at_those_learning_rates(schedule):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 3, 40)

    def make():
        return fastnn.Sequential(fastnn.Dense(5, 8, activation="tanh"), fastnn.Dense(8, 3), seed=2)

    fitted, stepped = make(), make()
    opt_a, opt_b = fastnn.SGD(lr=0.1, momentum=0.9), fastnn.SGD(lr=0.1, momentum=0.9)
    fitted.fit(X, y, optimizer=opt_a, epochs=3, batch_size=8, shuffle=False, lr_schedule=schedule)
    for t in range(15):
        opt_b.lr = 0.1 * schedule.factor(t, 15)
        stepped.train_step(X[(t % 5) * 8:(t % 5) * 8 + 8], y[(t % 5) * 8:(t % 5) * 8 + 8], optimizer=opt_b)
    for p, q in zip(fitted.parameters(), stepped.parameters()):
        np.testing.assert_allclose(p, q, rtol=1e-6, atol=1e-7)
    assert opt_a.lr == 0.1  # the schedule scales lr during fit; the attribute keeps the base


def test_bad_schedules_are_rejected():
    with pytest.raises(ValueError, match="step_size must be an integer >= 1"):
        fastnn.StepDecay(step_size=0)
    with pytest.raises(ValueError, match="min_factor must lie in"):
        fastnn.Cosine(min_factor=2)
    model = fastnn.Sequential(fastnn.Dense(2, 2))
    with pytest.raises(TypeError, match="lr_schedule must be a fastnn.schedules schedule"):
        model.fit(np.ones((2, 2)), np.array([0, 1]), optimizer=fastnn.SGD(lr=0.1), lr_schedule=0.5)
