"""The library's door (issue 26, item 7): a model and variables that do not
belong together, labels the model cannot have and a non-model are refused
in one line naming what is wrong, before any search step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ekg_jax
import ekg_jax.search

SHAPE = (32, 32, 3)


@pytest.fixture(scope='module')
def resnet20():
  model = ekg_jax.create_model('resnet20', num_classes=10)
  return model, model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))


def batches(labels=None):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 8) if labels is None else np.asarray(labels)
  return ekg_jax.Batches(
      images=(jnp.asarray(rng.normal(size=(len(labels), *SHAPE)),
                          jnp.float32),),
      labels=(jnp.asarray(labels),))


def test_another_depths_variables_are_refused_naming_the_first_extra(
    resnet20):
  model, _ = resnet20
  deeper = ekg_jax.create_model('resnet32', num_classes=10)
  variables = deeper.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match=r'variables: params/\S+ is not a '
                     r'variable of this model \(CifarResNet\); were they '
                     r'made for another model\?'):
    ekg_jax.prune(model, variables, batches(), 0.8, evaluation='loop')


def test_missing_and_misshaped_variables_are_named(resnet20):
  model, variables = resnet20
  params = dict(variables['params'])
  del params['fc']
  with pytest.raises(ValueError, match=r"the model's params/fc/\w+ "
                     r'\([\d, ]+\) is missing'):
    ekg_jax.prune(model, {**variables, 'params': params}, batches(), 0.8)
  wide = ekg_jax.create_model('resnet20', num_classes=100)
  other = wide.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match=r'params/fc/\w+ has shape '
                     r"\(([\d, ]+)?100,?\); this model's is "
                     r'\(([\d, ]+)?10,?\)'):
    ekg_jax.prune(model, other, batches(), 0.8)


def test_labels_outside_the_models_classes_are_refused(resnet20):
  model, variables = resnet20
  with pytest.raises(ValueError, match=r'batches: label 10 \(batch 0\) is '
                     r'outside \[0, 10\): the model has 10 classes'):
    ekg_jax.prune(model, variables, batches([0, 1, 10, 3]), 0.8)
  with pytest.raises(ValueError, match=r'label -1'):
    ekg_jax.prune(model, variables, batches([-1, 1, 2, 3]), 0.8)


def test_a_plain_function_gets_the_model_contract():
  with pytest.raises(TypeError, match=r'model is a function; it must be a '
                     r'Flax module .* returns logits'):
    ekg_jax.prune(lambda v, x: x, {'params': {}}, batches(), 0.8)


def test_slim_refuses_variables_of_another_model(resnet20):
  model, variables = resnet20
  table = ekg_jax.layer_table(model, SHAPE)
  masks = {'stage0': jnp.ones(16).at[0].set(0)}
  deeper = ekg_jax.create_model('resnet32', num_classes=10)
  other = deeper.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match='is not a variable of this model'):
    ekg_jax.slim(model, other, masks, table, input_shape=SHAPE)
  # Without the input shape, the gated layers' variables are still checked.
  narrow = ekg_jax.create_model('resnet20', num_classes=100).init(
      jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match=r"params/fc/\w+ has shape"):
    ekg_jax.slim(model, narrow, masks, table)
  with pytest.raises(TypeError, match='it must be a Flax module'):
    ekg_jax.slim(object(), variables, masks, table)
  # And the model's own variables pass both ways.
  small, small_vars = ekg_jax.slim(model, variables, masks, table,
                                   input_shape=SHAPE)
  assert small.apply(small_vars, jnp.zeros((2, *SHAPE))).shape == (2, 10)


def test_a_non_finite_objective_stops_the_search_naming_the_step(resnet20):
  model, variables = resnet20
  nan = lambda logits, labels, teacher: jnp.full(labels.shape, jnp.nan)
  with pytest.raises(ekg_jax.search.SearchError, match=r'search step 1: the '
                     r'objective is nan for candidate \S+ \(\d+ of \d+ '
                     r'candidates\)'):
    ekg_jax.prune(model, variables, batches(), 0.8, objective=nan,
                  evaluation='loop')
