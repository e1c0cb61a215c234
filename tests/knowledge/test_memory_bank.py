"""Memory bank: teacher selection, the vmapped teachers' logits, storage."""

import jax.numpy as jnp
import numpy as np
import pytest

from small import MEAN, STD, model_and_history
from ekg_jax.data import datasets as data_lib
from ekg_jax.supernet import gates as gates_lib
from ekg_jax.knowledge import memory_bank

def test_select_teachers_spreads_losses_from_the_best():
  losses = [0.5, 0.9, 0.3, 0.7, 0.4, 0.35]
  # min 0.3, max 0.9, K = 3: targets 0.3, 0.5, 0.7.
  assert memory_bank.select_teachers(losses, 3) == [2, 0, 3]
  # Targets 0.3, 0.45, 0.6, 0.75: 0.6 is nearest 0.5, picked by 0.45
  # already, so it takes the nearest entry left (0.31, 0.29 away).
  assert memory_bank.select_teachers([0.3, 0.31, 0.9, 0.5], 4) == [0, 3, 1, 2]
  assert sorted(memory_bank.select_teachers(losses, 6)) == list(range(6))


def test_the_final_searched_network_never_teaches():
  # The final network has the lowest loss; the reference drops it anyway.
  history = [{'val_loss': v} for v in (0.5, 0.9, 0.7, 0.6, 0.1)]
  candidates = memory_bank.teacher_candidates(history)
  assert candidates == [0.5, 0.9, 0.7, 0.6]
  for k in range(1, 5):
    chosen = memory_bank.select_teachers(candidates, k)
    assert len(history) - 1 not in chosen
    assert chosen[0] == 0  # the initial network: lowest loss left
  with pytest.raises(ValueError, match='choose 1..4'):
    memory_bank.select_teachers(candidates, 5)


@pytest.mark.parametrize('k', [0, 7])
def test_select_teachers_rejects_impossible_counts(k):
  with pytest.raises(ValueError, match='choose 1..6'):
    memory_bank.select_teachers([1.0] * 6, k)


def test_vmapped_teacher_logits_equal_one_teacher_at_a_time():
  model, variables, history, ranks_history = model_and_history()
  teachers = [2, 0]
  masks = memory_bank.teacher_masks(history, ranks_history, teachers)
  images = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3),
                                             dtype=np.uint8)
  got = memory_bank.make_teacher_logits(model, MEAN, STD)(variables, images,
                                                         masks)
  assert got.shape == (8, 2, 10)
  x = data_lib.normalize(images, MEAN, STD)
  for k, i in enumerate(teachers):
    one = gates_lib.masks_from_kept(history[i]['kept'], ranks_history[i])
    want = model.apply(variables, x, masks=one, train=True,
                       mutable=['batch_stats'])[0]
    np.testing.assert_allclose(got[:, k], want, rtol=1e-5, atol=1e-5)


def test_bank_resumes_to_the_same_logits_and_round_trips(tmp_path):
  model, variables, history, ranks_history = model_and_history()
  masks = memory_bank.teacher_masks(history, ranks_history, [1, 2])
  split = data_lib.Split(
      np.random.default_rng(2).integers(0, 256, (20, 32, 32, 3),
                                        dtype=np.uint8), np.zeros(20, np.int32))

  def empty():
    return memory_bank.MemoryBank(np.zeros((20, 2, 10), jnp.bfloat16),
                                  [1, 2], [0.5, 0.6], done=0)

  whole = memory_bank.build(model, variables, split, masks, 8, MEAN, STD,
                            empty(), progress=False)
  assert whole.complete

  path = str(tmp_path / 'bank.npz')

  class Killed(Exception):
    pass

  def save_then_die(bank):
    bank.save(path)
    raise Killed  # as if killed right after the first checkpoint

  with pytest.raises(Killed):
    memory_bank.build(model, variables, split, masks, 8, MEAN, STD, empty(),
                      on_checkpoint=save_then_die, checkpoint_every=1,
                      progress=False)
  partial = memory_bank.MemoryBank.load(path)
  assert partial.done == 8 and not partial.complete
  resumed = memory_bank.build(model, variables, split, masks, 8, MEAN, STD,
                              partial, progress=False)
  assert resumed.logits.dtype == jnp.bfloat16
  np.testing.assert_array_equal(resumed.logits.view(np.uint16),
                                whole.logits.view(np.uint16))
  resumed.save(path)
  loaded = memory_bank.MemoryBank.load(path)
  np.testing.assert_array_equal(loaded.logits.view(np.uint16),
                                whole.logits.view(np.uint16))
  assert (loaded.teachers, loaded.teacher_val_loss, loaded.done) == (
      [1, 2], [0.5, 0.6], 20)
