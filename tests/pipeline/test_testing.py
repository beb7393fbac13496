"""The testing helpers themselves: sources, sinks, run_pipeline and sample rows."""

from __future__ import annotations

import threading

import polars as pl
import pytest

from finsecure.event.schemas import Domain, batch_to_events, conform_batch
from finsecure.pipeline.batch import Batch, SourceChunk, Step
from finsecure.pipeline.engine import canonical_polars_schema
from finsecure.pipeline.testing import TestingSink, TestingSource, run_pipeline, sample_frame


@pytest.mark.parametrize("domain", list(Domain))
def test_sample_frame__is_canonical_and_valid(domain: Domain):
    frame = sample_frame(domain, 50, entities=7, source="unit")
    assert frame.schema == canonical_polars_schema(domain)
    conformed = conform_batch(domain, frame.to_arrow())  # every value rule holds
    assert conformed.num_rows == 50
    assert len(batch_to_events(conformed.slice(0, 3), domain)) == 3
    assert frame["event_id"].n_unique() == 50
    assert frame["user_id"].n_unique() == 7
    assert frame["ts"].is_sorted()
    assert sample_frame(domain, 0).schema == canonical_polars_schema(domain)


def test_testing_source__reads_the_domain_of_plain_frames():
    source = TestingSource([sample_frame("auth", 2), SourceChunk(Domain.cloud, sample_frame("cloud", 1))])
    assert [(chunk.domain, chunk.frame.height) for chunk in source.chunks()] == [
        (Domain.auth, 2),
        (Domain.cloud, 1),
    ]
    with pytest.raises(ValueError, match="pass domain="):
        list(TestingSource([pl.DataFrame({"x": [1]})]).chunks())
    source.close()
    assert source.closed


def test_testing_sink__waits_for_rows_from_another_thread():
    sink = TestingSink()
    batch = Batch(Domain.auth, sample_frame("auth", 3), source="t")
    threading.Timer(0.01, sink.write, args=(batch,)).start()
    assert sink.wait_for(rows=3, batches=1, timeout=10)
    assert not sink.wait_for(rows=4, timeout=0.01)
    assert sink.concat().equals(batch.frame)
    assert TestingSink().concat().is_empty()


def test_run_pipeline__an_operator_test_in_a_few_lines():
    class Double(Step):
        step_id = "double"

        def process(self, batch: Batch) -> Batch:
            return batch.with_frame(batch.frame.with_columns(amount2=pl.col("amount") * 2))

    sink = run_pipeline([Double()], [sample_frame("payment", 25)], max_rows=10)
    out = sink.concat()
    assert (out["amount2"] == out["amount"] * 2).all()
    assert [len(batch) for batch in sink.batches] == [10, 10, 5]
    assert sink.closed
    assert sink.dead_letters == []
