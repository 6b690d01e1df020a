"""jaxft.models.crf against brute force over every tag path, on tiny random cases (CPU, seconds)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from jaxft.models import crf

NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# L = 3, 4, 5; the 4-label set has a shuffled order and an I- tag without its B- tag
LABEL_SETS = (("O", "B-X", "I-X"), ("B-A", "I-A", "O", "I-B"), NER_LABELS)
GARBAGE = 1e3
TOL = 1e-5

# jitted once here: eager lax.scan retraces its body on every call, which costs seconds over this file
log_partition = jax.jit(crf.log_partition)
sequence_score = jax.jit(crf.sequence_score)
negative_log_likelihood = jax.jit(crf.negative_log_likelihood)
viterbi_decode = jax.jit(crf.viterbi_decode)


def may_follow(previous: str, name: str) -> bool:
    """IOB2 written out, independently of crf.iob2_constraints: I-X only after B-X or I-X."""
    return not name.startswith("I-") or previous in ("B-" + name[2:], "I-" + name[2:])


def is_valid_iob2(tag_names) -> bool:
    return all(may_follow(previous, name) for previous, name in zip(["O", *tag_names], tag_names))


def path_score(emissions, path, transitions, start, end) -> float:
    score = start[path[0]] + end[path[-1]]
    score += sum(emissions[t, tag] for t, tag in enumerate(path))
    score += sum(transitions[a, b] for a, b in itertools.pairwise(path))
    return float(score)


def brute_force(emissions, length, transitions, start, end, labels=None):
    """(log Z, best path, best score, marginals [length, L]) over all L^length paths in float64;
    with `labels`, over the IOB2-valid paths only."""
    num = emissions.shape[-1]
    if length == 0:
        return 0.0, (), 0.0, np.zeros((0, num))
    paths = [path for path in itertools.product(range(num), repeat=length)
             if labels is None or is_valid_iob2([labels[tag] for tag in path])]
    args = [np.asarray(x, np.float64) for x in (transitions, start, end)]
    scores = np.array([path_score(np.asarray(emissions, np.float64), path, *args) for path in paths])
    top = scores.max()
    log_z = top + np.log(np.exp(scores - top).sum())
    probabilities = np.exp(scores - log_z)
    marginals = np.zeros((length, num))
    for path, probability in zip(paths, probabilities, strict=True):
        marginals[np.arange(length), list(path)] += probability
    best = int(np.argmax(scores))
    return log_z, paths[best], scores[best], marginals


def random_case(seed: int, num: int, steps: int, lengths):
    """Emissions/tags with garbage in the padding, a prefix mask, random potentials (float32)."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    mask = np.arange(steps)[None, :] < lengths[:, None]
    emissions = rng.normal(size=(len(lengths), steps, num)).astype(np.float32)
    emissions[~mask] = GARBAGE
    tags = rng.integers(0, num, size=mask.shape)
    tags[~mask] = -100
    transitions = (0.5 * rng.normal(size=(num, num))).astype(np.float32)
    start = (0.5 * rng.normal(size=num)).astype(np.float32)
    end = (0.5 * rng.normal(size=num)).astype(np.float32)
    return emissions, tags, mask, lengths, (transitions, start, end)


def constrained(potentials, labels):
    return crf.apply_constraints(*potentials, *crf.iob2_constraints(labels))


CASES = [(seed, labels, steps, lengths)
         for seed in range(2)
         for labels in LABEL_SETS
         for steps, lengths in ((4, (0, 1, 2, 3, 4, 4)), (1, (1, 0, 1)))]


@pytest.mark.parametrize("use_constraints", [False, True], ids=["free", "iob2"])
@pytest.mark.parametrize("seed,labels,steps,lengths", CASES)
def test_against_brute_force(seed, labels, steps, lengths, use_constraints):
    emissions, tags, mask, lengths, potentials = random_case(seed, len(labels), steps, lengths)
    used = constrained(potentials, labels) if use_constraints else potentials
    log_z = np.asarray(log_partition(emissions, mask, *used))
    gold = np.asarray(sequence_score(emissions, tags, mask, *used))
    decoded, best_score = (np.asarray(x) for x in viterbi_decode(emissions, mask, *used))
    assert decoded.dtype == np.int32 and decoded.shape == mask.shape
    for row, length in enumerate(lengths):
        want_log_z, want_path, want_best, _ = brute_force(
            emissions[row], length, *potentials, labels=labels if use_constraints else None)
        np.testing.assert_allclose(log_z[row], want_log_z, rtol=0, atol=TOL)
        np.testing.assert_allclose(best_score[row], want_best, rtol=0, atol=TOL)
        assert tuple(decoded[row, :length]) == want_path
        assert not decoded[row, length:].any()
        if not use_constraints:  # gold tags are random, so under IOB2 they may carry penalties
            want_gold = path_score(emissions[row], tags[row, :length], *potentials) if length else 0.0
            np.testing.assert_allclose(gold[row], want_gold, rtol=0, atol=TOL)


@pytest.mark.parametrize("use_constraints", [False, True], ids=["free", "iob2"])
def test_gradients_are_marginals(use_constraints):
    """d log Z / d emissions[t, j] = P(y_t = j); d NLL / d emissions = marginals - one-hot(gold), 0 at padding."""
    labels = NER_LABELS
    emissions, tags, mask, lengths, potentials = random_case(7, len(labels), 4, (4, 2, 0, 3))
    if use_constraints:
        tags[:] = np.where(mask, 0, -100)  # all "O": a valid gold path
    used = constrained(potentials, labels) if use_constraints else potentials
    grad_log_z = jax.grad(lambda e: log_partition(e, mask, *used).sum())(emissions)
    grad_nll = jax.grad(lambda e: negative_log_likelihood(e, tags, mask, *used).sum())(emissions)
    for row, length in enumerate(lengths):
        *_, marginals = brute_force(emissions[row], length, *potentials, labels=labels if use_constraints else None)
        np.testing.assert_allclose(grad_log_z[row, :length], marginals, rtol=0, atol=TOL)
        gold_one_hot = np.eye(len(labels))[tags[row, :length]]
        np.testing.assert_allclose(grad_nll[row, :length], marginals - gold_one_hot, rtol=0, atol=TOL)
        assert not np.asarray(grad_nll[row, length:]).any()


def test_nll_check_grads_float64():
    emissions, tags, mask, _, potentials = random_case(3, len(NER_LABELS), 4, (4, 3, 1, 0))
    tags[:] = np.where(mask, tags, 0)
    emissions[~mask] = 0.0  # finite differences also perturb padding; their gradient is 0 either way
    allowed = crf.iob2_constraints(NER_LABELS)
    with jax.enable_x64(True):
        transitions, start, end = (np.asarray(x, np.float64) for x in potentials)

        @jax.jit
        def total_nll(emissions, transitions):
            used = crf.apply_constraints(transitions, start, end, *allowed)
            return negative_log_likelihood(emissions, tags, mask, *used).sum()

        args = (np.asarray(emissions, np.float64), transitions)
        grads = jax.grad(total_nll, argnums=(0, 1))(*args)
        assert all(np.isfinite(np.asarray(g)).all() for g in grads)
        check_grads(total_nll, args, order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_nll_is_partition_minus_score_and_nonnegative(labels):
    emissions, tags, mask, lengths, potentials = random_case(11, len(labels), 6, (6, 5, 1, 0, 3, 6, 2, 4))
    for used in (potentials, constrained(potentials, labels)):
        nll = np.asarray(negative_log_likelihood(emissions, tags, mask, *used))
        expected = (np.asarray(log_partition(emissions, mask, *used))
                    - np.asarray(sequence_score(emissions, tags, mask, *used)))
        np.testing.assert_allclose(nll, expected, rtol=0, atol=TOL)
        assert (nll >= -TOL).all(), nll
        assert nll[lengths == 0].tolist() == [0.0]
    # the decoded path is the most likely one: its NLL is >= 0 and no larger than the gold path's
    decoded, _ = viterbi_decode(emissions, mask, *potentials)
    decoded_nll = np.asarray(negative_log_likelihood(emissions, decoded, mask, *potentials))
    gold_nll = np.asarray(negative_log_likelihood(emissions, tags, mask, *potentials))
    assert (decoded_nll >= -TOL).all() and (decoded_nll <= gold_nll + TOL).all()


def run_all(emissions, tags, mask, used):
    tags_out, best = viterbi_decode(emissions, mask, *used)
    results = (negative_log_likelihood(emissions, tags, mask, *used), log_partition(emissions, mask, *used),
               sequence_score(emissions, tags, mask, *used), best)
    return np.asarray(tags_out), [np.asarray(x) for x in results]


def test_padding_garbage_and_jit_change_nothing():
    """Garbage padding (1e3, nan, inf emissions; -100 tags), clean padding, extra padding and eager runs all
    give the same tags, NLL, log Z, scores and best scores."""
    labels = NER_LABELS
    emissions, tags, mask, _, potentials = random_case(5, len(labels), 6, (6, 3, 0, 1, 5))
    emissions[1, 3:] = np.nan
    emissions[2] = np.nan  # the empty row
    emissions[3, 1:, 0] = np.inf
    used = constrained(potentials, labels)
    garbage_tags, garbage = run_all(emissions, tags, mask, used)
    assert all(np.isfinite(x).all() for x in garbage)

    clean = (np.where(mask[..., None], emissions, 0.0), np.where(mask, tags, 0), mask)
    longer = (np.pad(emissions, ((0, 0), (0, 3), (0, 0)), constant_values=-GARBAGE),
              np.pad(tags, ((0, 0), (0, 3)), constant_values=7), np.pad(mask, ((0, 0), (0, 3))))
    for other in (clean, longer):
        other_tags, others = run_all(*other, used)
        assert (other_tags[:, :6] == garbage_tags).all() and not other_tags[:, 6:].any()
        for got, want in zip(others, garbage, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=TOL)

    eager_tags, eager_best = crf.viterbi_decode(emissions, mask, *used)
    assert (np.asarray(eager_tags) == garbage_tags).all()
    np.testing.assert_allclose(eager_best, garbage[3], rtol=0, atol=TOL)

    # garbage gets no gradient and makes no gradient non-finite
    grads = jax.grad(lambda e, t: negative_log_likelihood(e, tags, mask, t, *used[1:]).sum(),
                     argnums=(0, 1))(emissions, used[0])
    assert np.isfinite(np.asarray(grads[0])).all() and np.isfinite(np.asarray(grads[1])).all()
    assert not np.asarray(grads[0])[~mask].any()


def test_decoded_paths_never_break_iob2():
    rng = np.random.default_rng(0)
    labels, steps, batch = NER_LABELS, 12, 8
    # learned potentials that actively prefer illegal moves: constraints have to win over them
    arrays = {key: (3.0 * rng.normal(size=shape)).astype(np.float32)
              for key, shape in (("transitions", (5, 5)), ("start_transitions", (5,)), ("end_transitions", (5,)))}
    arrays["start_transitions"][[2, 4]] += 20.0
    model = crf.CRF.from_arrays(labels, arrays)
    decode = jax.jit(model.decode)
    decode_free = jax.jit(lambda e, m: viterbi_decode(e, m, *(arrays[k] for k in crf.ARRAY_KEYS)))
    invalid_free = 0
    for _ in range(200):
        emissions = (100.0 * rng.normal(size=(batch, steps, len(labels)))).astype(np.float32)
        lengths = rng.integers(0, steps + 1, size=batch)
        mask = np.arange(steps)[None, :] < lengths[:, None]
        tags, score = (np.asarray(x) for x in decode(emissions, mask))
        free_tags, _ = decode_free(emissions, mask)
        assert np.isfinite(score).all()
        for row, length in enumerate(lengths):
            assert is_valid_iob2([labels[t] for t in tags[row, :length]]), (tags[row], length)
            assert not tags[row, length:].any()
            invalid_free += not is_valid_iob2([labels[t] for t in np.asarray(free_tags)[row, :length]])
    assert invalid_free > 100  # without the constraints these emissions do break IOB2: the check can fail


def test_iob2_constraint_masks():
    labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-MISC")
    allowed, start_allowed, end_allowed = crf.iob2_constraints(labels)
    assert allowed.dtype == bool and allowed.shape == (6, 6)
    for i, j in itertools.product(range(6), repeat=2):
        assert allowed[i, j] == may_follow(labels[i], labels[j]), (labels[i], labels[j])
    assert start_allowed.tolist() == [True, True, False, True, False, False]
    assert end_allowed.all()


@pytest.mark.parametrize("bad", ["PER", "B-", "X-PER", "i-PER", "S-LOC", "", "B_PER"])
def test_iob2_rejects_bad_labels(bad):
    with pytest.raises(ValueError, match=f"label '{bad}' is not an IOB2 tag"):
        crf.iob2_constraints(["O", bad, "B-PER"])
    with pytest.raises(ValueError, match="not an IOB2 tag"):
        crf.CRF(("O", bad))


def test_iob2_rejects_duplicates_and_a_bare_string():
    with pytest.raises(ValueError, match="duplicate labels"):
        crf.iob2_constraints(["O", "B-PER", "O"])
    with pytest.raises(TypeError):
        crf.CRF("O")


def test_module_params_arrays_and_nnx_transforms():
    rng = np.random.default_rng(1)
    model = crf.CRF(NER_LABELS)
    params = nnx.state(model, nnx.Param)
    assert len(jax.tree.leaves(params)) == 3 and len(jax.tree.leaves(nnx.state(model))) == 3  # masks are not state
    assert model.transitions.out_sharding == (None, None) and model.start_transitions.out_sharding == (None,)
    assert all(not np.asarray(v).any() and v.dtype == np.float32 for v in crf.transition_arrays(model).values())

    arrays = {key: rng.normal(size=value.shape).astype(np.float32)
              for key, value in crf.transition_arrays(model).items()}
    loaded = crf.CRF.from_arrays(NER_LABELS, arrays)
    for key, value in crf.transition_arrays(loaded).items():
        np.testing.assert_array_equal(value, arrays[key])
    with pytest.raises(ValueError, match="exactly the keys"):
        crf.CRF.from_arrays(NER_LABELS, {k: v for k, v in arrays.items() if k != "end_transitions"})
    with pytest.raises(ValueError, match="has shape"):
        crf.CRF.from_arrays(NER_LABELS, {**arrays, "transitions": np.zeros((4, 4), np.float32)})

    emissions, tags, mask, _, _ = random_case(2, len(NER_LABELS), 5, (5, 2, 0, 4))
    tags[:] = np.where(mask, 0, -100)
    used = crf.apply_constraints(*(arrays[k] for k in crf.ARRAY_KEYS), *crf.iob2_constraints(NER_LABELS))
    want_nll = negative_log_likelihood(emissions, tags, mask, *used)
    want_tags, want_score = viterbi_decode(emissions, mask, *used)

    # nnx.jit, and split + jax.jit (the hot-loop pattern), against the pure functions
    nnx_jit_nll = nnx.jit(lambda model, e, t, m: model.nll(e, t, m))(loaded, emissions, tags, mask)
    np.testing.assert_allclose(nnx_jit_nll, want_nll, rtol=0, atol=TOL)
    graphdef, state = nnx.split(loaded)
    jitted = jax.jit(lambda state, e, m: nnx.merge(graphdef, state, copy=True).decode(e, m))
    jit_tags, jit_score = jitted(state, emissions, mask)
    assert (np.asarray(jit_tags) == np.asarray(want_tags)).all()
    np.testing.assert_allclose(jit_score, want_score, rtol=0, atol=TOL)

    grads = nnx.jit(nnx.grad(lambda model: model.nll(emissions, tags, mask).sum()))(loaded)
    for leaf in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(leaf)).all() and np.asarray(leaf).any()


def test_params_get_shardings_under_a_mesh():
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):
        model = crf.CRF(NER_LABELS)
        shardings = nnx.get_named_sharding(nnx.state(model, nnx.Param), mesh)
        emissions = jnp.zeros((2, 3, len(NER_LABELS)))
        tags, _ = jax.jit(model.decode)(emissions, jnp.ones((2, 3), bool))
    specs = [sharding.spec for sharding in jax.tree.leaves(shardings)]
    assert specs == [jax.sharding.PartitionSpec(None)] * 2 + [jax.sharding.PartitionSpec(None, None)], specs
    assert np.asarray(tags).shape == (2, 3)


def test_per_row_boundaries_against_brute_force():
    """start/end may be [B, L]: a row with zeros is a chain that continues beyond the row (no boundary score,
    no boundary constraint), the others keep theirs."""
    labels = NER_LABELS
    emissions, tags, mask, lengths, potentials = random_case(13, len(labels), 4, (4, 3, 2, 0))
    transitions, start, end = constrained(potentials, labels)
    open_start = np.array([True, False, True, False])
    open_end = np.array([False, True, True, False])
    starts = np.where(open_start[:, None], 0.0, np.asarray(start)[None]).astype(np.float32)
    ends = np.where(open_end[:, None], 0.0, np.asarray(end)[None]).astype(np.float32)
    log_z = np.asarray(log_partition(emissions, mask, transitions, starts, ends))
    decoded, best = (np.asarray(x) for x in viterbi_decode(emissions, mask, transitions, starts, ends))
    gold = np.asarray(sequence_score(emissions, tags, mask, transitions, starts, ends))
    got_marginals = np.asarray(jax.jit(crf.marginals)(emissions, mask, transitions, starts, ends))
    raw_transitions, raw_start, raw_end = potentials
    allowed, start_ok, end_ok = crf.iob2_constraints(labels)
    for row, length in enumerate(lengths):
        # brute force over the paths that the row's rules allow: IOB2 moves always, boundaries where closed
        row_start = np.zeros(len(labels)) if open_start[row] else raw_start
        row_end = np.zeros(len(labels)) if open_end[row] else raw_end
        ok_start = np.ones(len(labels), bool) if open_start[row] else start_ok
        paths = [p for p in itertools.product(range(len(labels)), repeat=length)
                 if ok_start[p[0]] and all(allowed[a, b] for a, b in itertools.pairwise(p))] if length else [()]
        scores = np.array([path_score(emissions[row].astype(np.float64), p, raw_transitions, row_start, row_end)
                           if p else 0.0 for p in paths])
        top = scores.max()
        np.testing.assert_allclose(log_z[row], top + np.log(np.exp(scores - top).sum()), rtol=0, atol=TOL)
        np.testing.assert_allclose(best[row], top, rtol=0, atol=TOL)
        assert tuple(decoded[row, :length]) == paths[int(np.argmax(scores))]
        if length:
            probabilities = np.exp(scores - log_z[row])
            want = np.zeros((length, len(labels)))
            for path, probability in zip(paths, probabilities):
                want[np.arange(length), list(path)] += probability
            np.testing.assert_allclose(got_marginals[row, :length], want, rtol=0, atol=TOL)
            if all(allowed[a, b] for a, b in itertools.pairwise(tags[row, :length])) and ok_start[tags[row, 0]]:
                want_gold = path_score(emissions[row], tags[row, :length], raw_transitions, row_start, row_end)
                np.testing.assert_allclose(gold[row], want_gold, rtol=0, atol=1e-4)
        assert not got_marginals[row, length:].any()
    with pytest.raises(ValueError, match=r"start/end: \[labels\] or \[batch, labels\]"):
        crf.log_partition(emissions, mask, transitions, starts[:2], ends)


def test_marginals_sum_to_one_and_match_the_gradient():
    emissions, _, mask, lengths, potentials = random_case(17, len(NER_LABELS), 5, (5, 1, 0, 3))
    used = constrained(potentials, NER_LABELS)
    got = np.asarray(jax.jit(crf.marginals)(emissions, mask, *used))
    np.testing.assert_allclose(got.sum(-1), mask.astype(float), rtol=0, atol=1e-5)
    gradient = jax.grad(lambda e: log_partition(e, mask, *used).sum())(emissions)
    np.testing.assert_allclose(got, np.where(mask[..., None], gradient, 0.0), rtol=0, atol=1e-6)


def test_select_steps_moves_chosen_positions_to_the_front_in_order():
    keep = np.array([[0, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    order, mask = (np.asarray(x) for x in crf.select_steps(keep))
    assert order[0, :3].tolist() == [1, 3, 4] and mask[0].tolist() == [1, 1, 1, 0, 0, 0]
    assert not mask[1].any() and order[2].tolist() == list(range(6)) and mask[2].all()
    assert all(sorted(row) == list(range(6)) for row in order.tolist())  # a permutation: scatter-back is total


@pytest.mark.parametrize("ratio", [1.0, 10.0, 100.0])
def test_lr_ratio_scales_the_potentials_and_passes_the_gradient_through(ratio):
    """potentials = ratio x stored, d loss / d stored = d loss / d potentials: Adam's step on the stored value
    (about lr, whatever the gradient's scale) moves the potentials ratio x lr."""
    import optax

    rng = np.random.default_rng(3)
    arrays = {key: rng.normal(size=shape).astype(np.float32)
              for key, shape in (("transitions", (5, 5)), ("start_transitions", (5,)), ("end_transitions", (5,)))}
    model = crf.CRF.from_arrays(NER_LABELS, arrays, lr_ratio=ratio)
    for key, value in crf.transition_arrays(model).items():
        np.testing.assert_allclose(value, arrays[key], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(getattr(model, key)[...]) * ratio, arrays[key], rtol=1e-6)
    emissions, tags, mask, _, _ = random_case(4, 5, 4, (4, 3))
    tags[:] = np.where(mask, 0, -100)
    graphdef, state = nnx.split(model)

    def loss(state):
        return nnx.merge(graphdef, state).nll(emissions, tags, mask).sum()

    grads = jax.grad(loss)(state)
    reference = jax.grad(lambda t: negative_log_likelihood(
        emissions, tags, mask, *crf.apply_constraints(t, arrays["start_transitions"], arrays["end_transitions"],
                                                      *crf.iob2_constraints(NER_LABELS))).sum())(
        arrays["transitions"])
    np.testing.assert_allclose(np.asarray(grads["transitions"][...]), reference, rtol=1e-5, atol=1e-6)
    tx = optax.adam(1e-3)
    updates, _ = tx.update(grads, tx.init(state), state)
    moved = nnx.merge(graphdef, optax.apply_updates(state, updates))
    step = crf.transition_arrays(moved)["transitions"] - arrays["transitions"]
    moving = np.abs(reference) > 1e-3  # disallowed moves have (almost) no gradient and stay put
    assert moving.sum() > 10
    np.testing.assert_allclose(np.abs(step[moving]), ratio * 1e-3, rtol=1e-3)  # Adam's first step: lr x sign(g)
    with pytest.raises(ValueError, match="lr_ratio must be > 0"):
        crf.CRF(NER_LABELS, lr_ratio=0.0)
