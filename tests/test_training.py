"""Fast checks of the training library (no TensorFlow): the schedule file against upstream's
own reader, fresh slots as TF creates them, the NaN stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facenet_convert.models.squeezenet import SqueezeNet
from facenet_convert.third_party.facenet.testing.upstream_code import upstream_functions
from facenet_convert.training.optimizers import TrainingError, make_optimizer
from facenet_convert.training.schedule import ScheduleError, parse_schedule, read_schedule
from facenet_convert.training.step import Trainer

SCHEDULE = """# Learning rate schedule
# Maps an epoch number to a learning rate
0:  0.05
100: 0.005
200: 0.0005
276: -1
"""


def test_schedule_equals_upstreams_reader(tmp_path: Path):
    path = tmp_path / "learning_rate_schedule.txt"
    path.write_text(SCHEDULE)
    upstream = upstream_functions("facenet/src/facenet.py", ("get_learning_rate_from_file",))
    ours = read_schedule(path)
    for epoch in (0, 1, 99, 100, 150, 200, 275, 276, 300):
        theirs = upstream["get_learning_rate_from_file"](str(path), epoch)
        # upstream returns -1 (or nothing) where train_softmax.py stops (lr <= 0): None here
        expected = None if theirs is None or theirs <= 0 else theirs
        assert ours.rate_for_epoch(epoch) == expected


@pytest.mark.parametrize("text", ["", "0 0.1", "x: 0.1", "0: fast", "5: 0.1\n1: 0.2",
                                  "0: nan"])
def test_bad_schedules_give_one_line(text: str):
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(text, "s.txt")
    assert "\n" not in str(caught.value)


def test_fresh_slots_are_tfs():
    param = torch.nn.Parameter(torch.zeros(3))
    assert torch.equal(make_optimizer("RMSPROP", [param], 0.1).slots(param)["ms"],
                       torch.ones(3))
    accumulator = make_optimizer("ADAGRAD", [param], 0.1).slots(param)["accumulator"]
    assert torch.equal(accumulator, torch.full((3,), torch.tensor(0.1).item()))
    adam = make_optimizer("ADAM", [param], 0.1)
    assert adam.param_groups[0]["beta1_power"].item() == torch.tensor(0.9).item()
    with pytest.raises(TrainingError, match="FTRL"):
        make_optimizer("FTRL", [param], 0.1)


def test_a_nan_loss_stops_before_anything_moves():
    torch.manual_seed(0)
    model = SqueezeNet(embedding_size=8, num_classes=3)
    params = [p for n, p in model.named_parameters() if not n.endswith("bn.weight")]
    trainer = Trainer(model, make_optimizer("ADAM", params, 0.01))
    before = {k: v.clone() for k, v in model.state_dict().items()
              if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    images = torch.full((2, 3, 64, 64), float("nan"))
    with pytest.raises(TrainingError, match="step 0"):
        trainer.step(images, torch.tensor([0, 1]), 0.01)
    after = model.state_dict()
    assert all(torch.equal(value, after[key]) for key, value in before.items())
    assert trainer.global_step == 0
