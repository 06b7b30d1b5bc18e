"""Data order, sharding and sequence packing of the local trainer (training/packing.py)."""

import random

import pytest

from modelchain.training.packing import (
    IGNORE_INDEX,
    Example,
    build_batch,
    global_batch,
    micro_batches,
    pack,
    shard,
)

from ..tiny_model import tiny_model  # noqa: F401 (fixture)

# ----------------------------------------------------------------------------- data order


def test_global_batch_is_a_function_of_seed_and_step():
    first = [global_batch(step, 10, 4, seed=7) for step in range(6)]
    # Asking for a later step first, or twice, changes nothing: no hidden iterator state.
    assert global_batch(5, 10, 4, seed=7) == first[5]
    assert [global_batch(step, 10, 4, seed=7) for step in range(6)] == first
    assert global_batch(0, 10, 4, seed=8) != first[0]


def test_every_epoch_is_a_permutation():
    stream = [i for step in range(15) for i in global_batch(step, 12, 4, seed=0)]  # 60 items, 5 epochs
    epochs = [stream[e * 12 : (e + 1) * 12] for e in range(5)]
    assert all(sorted(epoch) == list(range(12)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 5  # a fresh order each epoch


def test_batches_cross_epoch_boundaries():
    # 10 rows, batches of 4: step 2 takes the last two of epoch 0 and the first two of epoch 1.
    epoch0 = [i for step in range(2) for i in global_batch(step, 10, 4, 0)] + global_batch(2, 10, 4, 0)[:2]
    assert sorted(epoch0) == list(range(10))


def test_shards_are_disjoint_and_cover_the_batch():
    batch = global_batch(3, 50, 8, seed=1)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert sorted(i for part in parts for i in part) == sorted(batch)
    assert [len(p) for p in parts] == [3, 3, 2]
    assert shard(batch, 0, 1) == batch
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        shard(batch, 2, 2)


# ----------------------------------------------------------------------------- packing


def test_pack_places_every_item_once_within_capacity():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 100) for _ in range(rng.randint(1, 30))]
        rows = pack(lengths, 128)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
        # Never more rows than one per item, and never fewer than the tokens need.
        assert -(-sum(lengths) // 128) <= len(rows) <= len(lengths)


def test_pack_balances_the_rows():
    # First-fit decreasing needs two rows; left as found they would be 100 and 20 long.
    rows = pack([60, 40, 10, 10], 100)
    assert len(rows) == 2
    assert sorted(sum([60, 40, 10, 10][i] for i in row) for row in rows) == [60, 60]


def test_pack_refuses_an_item_longer_than_a_row():
    with pytest.raises(ValueError, match="example of 130 tokens does not fit a row of 128"):
        pack([10, 130], 128)


def example(n, answer):
    """n prompt tokens then `answer` answer tokens, token ids counting up from 10 * n."""
    ids = list(range(10 * n, 10 * n + n + answer))
    return Example(input_ids=ids, labels=[IGNORE_INDEX] * n + ids[n:])


def test_build_batch_resets_positions_and_masks_boundaries():
    a, b, c = example(3, 2), example(2, 1), example(4, 1)  # lengths 5, 3, 5
    batch = build_batch([a, b, c], [[0, 1], [2]], pad_id=0)
    ids, pos, targets = batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["targets"].tolist()
    assert ids[0] == a.input_ids + b.input_ids
    assert pos[0] == [0, 1, 2, 3, 4, 0, 1, 2]  # each example starts again at 0
    X = IGNORE_INDEX
    # a: positions 2 and 3 predict its answer; a's last token does not predict b's first.
    assert targets[0][:5] == [X, X, a.input_ids[3], a.input_ids[4], X]
    assert targets[0][5:] == [X, b.input_ids[2], X]
    # Row 2 is padded on the right; padding continues the positions and has no target.
    assert ids[1] == c.input_ids + [0, 0, 0]
    assert pos[1] == [0, 1, 2, 3, 4, 5, 6, 7]
    assert targets[1] == [X, X, X, c.input_ids[4], X, X, X, X]
    assert batch["real_tokens"] == 13 and batch["slots"] == 16
    # Exactly the answer tokens are targets, once each.
    assert sum(t != X for row in targets for t in row) == 2 + 1 + 1


def test_micro_batches_bound_rows_and_tokens():
    examples = [example(n, 1) for n in (50, 40, 30, 20, 10, 60, 70)]
    packed = micro_batches(examples, packing=True, max_seq_len=100, rows_per_batch=2)
    flat = [row for group in packed for row in group]
    assert sorted(i for row in flat for i in row) == list(range(7))
    assert all(len(group) <= 2 for group in packed)
    assert all(sum(len(examples[i].input_ids) for i in row) <= 100 for row in flat)
    unpacked = micro_batches(examples, packing=False, max_seq_len=100, rows_per_batch=3)
    assert unpacked == [[[0], [1], [2]], [[3], [4], [5]], [[6]]]


# ----------------------------------------------------------------------------- attention


@pytest.fixture(scope="module")
def tiny_lm(tiny_model):
    """The tiny model loaded, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


def test_a_packed_row_computes_what_each_example_computes_alone(tiny_lm):
    """No token attends across a boundary: packed logits equal those of separate forwards."""
    import torch

    rng = random.Random(3)
    examples = []
    for n in (7, 12, 5):
        ids = [rng.randrange(100, 5000) for _ in range(n)]
        examples.append(Example(input_ids=ids, labels=[IGNORE_INDEX] * (n - 2) + ids[-2:]))
    batch = build_batch(examples, [[0, 1, 2]], pad_id=0)
    with torch.no_grad():
        # Without a cache, as in training: transformers looks for packed rows only then.
        packed = tiny_lm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for e in examples:
            alone = tiny_lm(input_ids=torch.tensor([e.input_ids])).logits[0]
            torch.testing.assert_close(packed[start : start + len(e.input_ids)], alone, atol=1e-4, rtol=1e-4)
            start += len(e.input_ids)
        # Without the position resets the same row attends across examples and differs.
        plain = tiny_lm(input_ids=batch["input_ids"], use_cache=False).logits[0]
        assert not torch.allclose(plain[7:19], packed[7:19], atol=1e-3)


def test_the_loss_needs_only_the_kept_logits(tiny_lm):
    """logits_to_keep=targets mask gives the full forward's logits at exactly those positions."""
    import torch

    examples = [example(6, 2), example(4, 3)]
    batch = build_batch(examples, [[0, 1]], pad_id=0)
    keep = batch["targets"] != IGNORE_INDEX
    with torch.no_grad():
        inputs = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        full = tiny_lm(**inputs).logits
        kept = tiny_lm(**inputs, logits_to_keep=keep).logits
    assert kept.shape == (int(keep.sum()), full.shape[-1])
    torch.testing.assert_close(kept, full[keep], atol=1e-5, rtol=1e-5)


def test_one_row_lays_every_example_end_to_end_without_padding():
    examples = [example(6, 2), example(4, 3), example(9, 1)]
    batch = build_batch(examples, [[0, 1], [2]], pad_id=0, one_row=True)
    assert batch["input_ids"].shape == (1, 25)  # 8 + 7 + 10 tokens
    assert batch["slots"] == batch["real_tokens"] == 25
    assert batch["cu_seq_lens"].tolist() == [0, 8, 15, 25]
    assert batch["position_ids"][0].tolist() == list(range(8)) + list(range(7)) + list(range(10))
    # Each example's targets stay its own: the same as the padded rows give.
    padded = build_batch(examples, [[0, 1], [2]], pad_id=0)
    rows = padded["targets"].tolist()
    assert batch["targets"][0].tolist() == rows[0][:15] + rows[1][:10]
    assert "cu_seq_lens" not in padded


def test_segment_attention_matches_the_masked_attention_and_its_gradients(tiny_model):  # noqa: F811
    """One row under segment attention gives the logits and LoRA gradients of the block-diagonal mask."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from modelchain.training import segment_attention

    rng = random.Random(5)
    examples = []
    for n in (7, 12, 5, 9):
        ids = [rng.randrange(100, 5000) for _ in range(n)]
        examples.append(Example(input_ids=ids, labels=[IGNORE_INDEX] * (n - 3) + ids[-3:]))
    batch = build_batch(examples, [[0, 1], [2, 3]], pad_id=0, one_row=True)
    keep = batch["targets"] != IGNORE_INDEX

    def loss_and_grads(attn_implementation, **extra):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn_implementation)
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules=["q_proj", "v_proj", "down_proj"]))
        # LoRA B starts at zero; give it weights so the gradients reach A and attention too.
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       logits_to_keep=keep, use_cache=False, **extra).logits
        loss = torch.nn.functional.cross_entropy(logits, batch["targets"][keep], reduction="sum")
        loss.backward()
        return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    masked_logits, masked_grads = loss_and_grads("sdpa")
    segment_logits, segment_grads = loss_and_grads(segment_attention.register(), cu_seq_lens_q=batch["cu_seq_lens"])
    torch.testing.assert_close(segment_logits, masked_logits, atol=1e-4, rtol=1e-4)
    assert segment_grads.keys() == masked_grads.keys() and segment_grads
    for name, grad in masked_grads.items():
        torch.testing.assert_close(segment_grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)
    # Boundaries that are wrong change the answer, so the test would see a segment leak.
    wrong = torch.tensor([0, 19, 33], dtype=torch.int32)
    wrong_logits, _ = loss_and_grads(segment_attention.ATTENTION_NAME, cu_seq_lens_q=wrong)
    assert not torch.allclose(wrong_logits, masked_logits, atol=1e-3)


def test_segment_attention_refuses_boundaries_that_do_not_cover_the_row(tiny_model):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    from modelchain.training import segment_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=segment_attention.register())
    with pytest.raises(ValueError, match="cu_seq_lens_q must rise from 0"):
        model(input_ids=torch.tensor([[5, 6, 7, 8]]), position_ids=torch.tensor([[0, 1, 0, 1]]),
              cu_seq_lens_q=torch.tensor([0, 2, 3]), use_cache=False)
