"""The rollout dataclass: validation catches each kind of inconsistency, minibatches partition the batch."""

import subprocess
import sys

import pytest
import torch

from rlhfkit.rollout.experience import _SHAPES, Rollout

B, P, T = 6, 4, 5


def make_rollout(seed: int = 0, complete: bool = True) -> Rollout:
    g = torch.Generator().manual_seed(seed)
    prompt_lengths = torch.tensor([4, 2, 3, 1, 4, 2])
    response_lengths = torch.tensor([5, 1, 3, 5, 2, 4])
    query_mask = (torch.arange(P)[None, :] >= (P - prompt_lengths)[:, None]).long()  # left-padded
    response_mask = (torch.arange(T)[None, :] < response_lengths[:, None]).long()  # right-padded
    rollout = Rollout(
        query_ids=torch.randint(0, 50, (B, P), generator=g),
        query_mask=query_mask,
        response_ids=torch.randint(0, 50, (B, T), generator=g),
        response_mask=response_mask,
        logprobs=-torch.rand(B, T, generator=g) * 3,
    )
    if complete:
        rollout = rollout.replace(
            ref_logprobs=-torch.rand(B, T, generator=g) * 3, values=torch.randn(B, T, generator=g),
            scores=torch.randn(B, generator=g), kl=torch.randn(B, T, generator=g),
            rewards=torch.randn(B, T, generator=g), advantages=torch.randn(B, T, generator=g),
            returns=torch.randn(B, T, generator=g),
            env_mask=torch.zeros(B, T, dtype=torch.long).index_put_((torch.tensor([0, 0, 3]), torch.tensor([1, 2, 2])),
                                                                    torch.tensor(1)),  # two episodes' observations
        )
    return rollout


def test_valid_rollouts_pass_partial_and_complete():
    make_rollout(complete=False).validate()
    assert make_rollout().validate().batch_size == B
    assert make_rollout().response_lengths.tolist() == [5, 1, 3, 5, 2, 4]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.replace(values=torch.zeros(B, T + 1)), "values has shape"),
        (lambda r: r.replace(scores=torch.zeros(B, 1)), "scores has shape"),
        (lambda r: r.replace(advantages=torch.zeros(B - 1, T)), "advantages has shape"),
        (lambda r: r.replace(query_ids=r.query_ids.float()), "query_ids must hold integer"),
        (lambda r: r.replace(response_mask=r.response_mask * 2), "response_mask must be 0/1"),
        (lambda r: r.replace(response_mask=r.response_mask.flip(1)), "response_mask is not right-padded"),
        (lambda r: r.replace(query_mask=r.query_mask.flip(1)), "query_mask is not left-padded"),
        (lambda r: r.replace(response_mask=torch.cat([torch.zeros(1, T, dtype=torch.long), r.response_mask[1:]])),
         "response_mask row 0 has no token"),
        (lambda r: r.replace(logprobs=r.logprobs.abs() + 0.1), "logprobs has positive entries"),
        (lambda r: r.replace(values=torch.full((B, T), float("nan"))), "values has non-finite"),
        (lambda r: r.replace(scores=torch.tensor([float("inf")] * B)), "scores has non-finite"),
        (lambda r: r.replace(rewards=torch.zeros(B, T, dtype=torch.long)), "rewards must be floating"),
    ],
)
def test_validate_names_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        change(make_rollout()).validate()


def test_garbage_outside_the_mask_is_allowed():
    rollout = make_rollout()
    values = rollout.values.clone()
    values[~rollout.response_mask.bool()] = float("nan")  # padding positions are never read
    logprobs = rollout.logprobs.masked_fill(~rollout.response_mask.bool(), 5.0)
    rollout.replace(values=values, logprobs=logprobs).validate()


def test_minibatches_partition_the_batch_and_slice_every_field_alike():
    rollout = make_rollout()
    parts = list(rollout.minibatches(4, generator=torch.Generator().manual_seed(1)))
    assert [len(p) for p in parts] == [4, 2]
    seen = []
    for part in parts:
        part.validate()
        for row in range(len(part)):
            # find the source row by its (unique) response ids and check every field came from that row
            source = [i for i in range(B) if torch.equal(rollout.response_ids[i], part.response_ids[row])]
            assert len(source) == 1
            i = source[0]
            seen.append(i)
            for name, tensor in rollout.present_fields().items():
                assert torch.equal(getattr(part, name)[row], tensor[i]), name
    assert sorted(seen) == list(range(B))


def test_minibatches_are_reproducible_from_the_generator_state():
    rollout = make_rollout()

    def orders(seed):
        g = torch.Generator().manual_seed(seed)
        return [p.response_ids.tolist() for p in rollout.minibatches(2, generator=g)]

    assert orders(3) == orders(3)
    assert orders(3) != orders(4)
    unshuffled = list(rollout.minibatches(2, shuffle=False))
    assert torch.equal(torch.cat([p.response_ids for p in unshuffled]), rollout.response_ids)


def test_to_moves_every_present_field():
    moved = make_rollout(complete=False).to("meta")
    assert all(t.device.type == "meta" for t in moved.present_fields().values())
    assert moved.values is None


def test_cat_repads_and_round_trips_through_index_select():
    whole = make_rollout()
    # pieces of narrower widths: rows 1, 3 have prompts of ≤ 2 tokens, row 4 a response of 2 tokens
    first = whole.index_select([1, 3])
    first = first.replace(**{n: getattr(first, n)[:, 2:] for n in ("query_ids", "query_mask")})
    second = whole.index_select([4])
    second = second.replace(**{n: getattr(second, n)[:, :2] for n, k in _SHAPES.items() if k == "BT"})
    third = whole.index_select([0, 2, 5])
    joined = Rollout.cat([first, second, third]).validate()
    assert joined.query_ids.shape == (B, P) and joined.response_ids.shape == (B, T)
    expected = whole.index_select([1, 3, 4, 0, 2, 5])
    for name, tensor in expected.present_fields().items():
        got = getattr(joined, name)
        if name in ("query_ids", "response_ids"):  # re-padded entries are padding: compare under the mask
            valid = (expected.query_mask if name == "query_ids" else expected.response_mask).bool()
            assert torch.equal(got[valid], tensor[valid]), name
        elif _SHAPES[name] == "BT":
            valid = expected.response_mask.bool()
            assert torch.equal(got[valid], tensor[valid]), name
        else:
            assert torch.equal(got, tensor), name
    with pytest.raises(ValueError, match="different fields"):
        Rollout.cat([make_rollout(), make_rollout(complete=False)])


def test_trimmed_drops_only_columns_that_are_padding_in_every_row():
    whole = make_rollout()
    narrow = whole.index_select([1, 5, 4])  # prompts of 2, 2, 4 tokens; responses of 1, 4, 2 tokens
    trimmed = narrow.trimmed().validate()
    assert trimmed.query_ids.shape == (3, 4) and trimmed.response_ids.shape == (3, 4)  # one response column less
    short = whole.index_select([1, 5]).trimmed().validate()
    assert short.query_ids.shape == (2, 2) and short.response_ids.shape == (2, 4)
    for part, rows in ((trimmed, [1, 5, 4]), (short, [1, 5])):
        full = whole.index_select(rows)
        for name, tensor in full.present_fields().items():
            kind = _SHAPES[name]
            if kind == "BP":  # the kept columns are the last ones, and nothing real was dropped
                assert torch.equal(getattr(part, name), tensor[:, P - part.query_ids.shape[1] :]), name
            elif kind == "BT":
                assert torch.equal(getattr(part, name), tensor[:, : part.response_ids.shape[1]]), name
            else:
                assert torch.equal(getattr(part, name), tensor), name
        assert part.query_mask.sum() == full.query_mask.sum()
        assert part.response_mask.sum() == full.response_mask.sum()


def test_length_groups_cover_every_row_once_sorted_by_prompt_length():
    whole = make_rollout()
    groups = list(whole.length_groups(4))
    rows = torch.cat([r for r, _ in groups])
    assert sorted(rows.tolist()) == list(range(B)) and [len(r) for r, _ in groups] == [4, 2]
    lengths = whole.query_mask.sum(1)[rows]
    assert lengths.tolist() == sorted(lengths.tolist())  # prompt lengths 1, 2, 2, 3 | 4, 4
    first_rows, first = groups[0]
    assert first.query_ids.shape[1] == 3  # the group's longest prompt, not the batch's (4)
    assert torch.equal(first.scores, whole.scores[first_rows])
    with pytest.raises(ValueError, match="≥ 1"):
        next(whole.length_groups(0))


def test_sequences_and_from_generation():
    class FakeGeneration:  # GenerationOutput's fields, without importing the generation engine
        prompt_ids = torch.tensor([[0, 5, 6]])
        prompt_mask = torch.tensor([[0, 1, 1]])
        response_ids = torch.tensor([[7, 2, 0]])
        response_mask = torch.tensor([[1, 1, 0]])
        logprobs = torch.tensor([[-0.5, -1.0, 0.0]])

    rollout = Rollout.from_generation(FakeGeneration()).validate()
    ids, mask = rollout.sequences()
    assert ids.tolist() == [[0, 5, 6, 7, 2, 0]] and mask.tolist() == [[0, 1, 1, 1, 1, 0]]
    FakeGeneration.logprobs = None
    with pytest.raises(ValueError, match="no logprobs"):
        Rollout.from_generation(FakeGeneration())


def test_imports_only_torch_and_stdlib():
    code = (
        "import sys; import rlhfkit.rollout.experience; "
        "bad = [m for m in ('transformers', 'peft', 'accelerate', 'rlhfkit.rollout.generate') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
