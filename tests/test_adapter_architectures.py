"""mmsy_hf on four architectures: batched equals unbatched, and KV cache reuse equals full re-encoding.

Each architecture is a tiny random-weight checkpoint from ``fixtures.tiny_vlms``.
Greedy outputs of random models are sensitive to every prompt token and to the
visual features, so a wrong padding, position or cache entry changes them.
"""

import pytest
from fixtures.lmms_requests import (
    live_new_turn,
    live_whole_dialogue,
    make_docs,
    make_requests,
    prefilled_messages,
)
from fixtures.logs import captured_logs
from fixtures.tiny_vlms import BUILDERS

from mmsy_models.adapter import MMSYHF

ARCHITECTURES = sorted(BUILDERS)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def adapter(request, tmp_path_factory):
    """One MMSYHF per architecture, shared by the tests of this module."""
    path = BUILDERS[request.param](tmp_path_factory.mktemp(request.param) / "checkpoint")
    return MMSYHF(pretrained=str(path), device="cpu", dtype="float32")


def _configure(adapter, batch_size, kv_reuse):
    adapter.batch_size_per_device = batch_size
    adapter.kv_reuse = kv_reuse


def test_generate_until_batched_equals_unbatched(adapter):
    docs = make_docs(6, seed=1)
    requests = make_requests(adapter, docs, prefilled_messages, {"max_new_tokens": 5})

    _configure(adapter, batch_size=1, kv_reuse=True)
    unbatched = [result.text for result in adapter.generate_until(requests)]
    _configure(adapter, batch_size=4, kv_reuse=True)
    batched = [result.text for result in adapter.generate_until(requests)]

    assert batched == unbatched
    assert len(set(unbatched)) > 1, "outputs do not depend on the prompt, so the comparison shows nothing"


@pytest.mark.parametrize("doc_to_messages", [live_whole_dialogue, live_new_turn], ids=["whole", "new_turn"])
def test_multi_round_reuse_equals_full_encoding(adapter, doc_to_messages):
    docs = make_docs(6, seed=2)
    requests = make_requests(adapter, docs, doc_to_messages, {"max_new_tokens": 5}, "generate_until_multi_round")

    _configure(adapter, batch_size=1, kv_reuse=False)
    reference = adapter.generate_until_multi_round(requests)
    _configure(adapter, batch_size=4, kv_reuse=True)
    with captured_logs() as messages:
        reused = adapter.generate_until_multi_round(requests)

    assert reused == reference
    expected_rounds = 2 if doc_to_messages is live_whole_dialogue else 3
    assert all(len(outputs) == expected_rounds for outputs in reference)
    assert len({outputs[-1] for outputs in reference}) > 1
    summary = next(message for message in messages if message.startswith("mmsy_hf:"))
    later_rounds = len(docs) * (expected_rounds - 1)
    assert f"KV cache reused for {later_rounds} later rounds" in summary
    assert "0 later rounds encoded in full" in summary
