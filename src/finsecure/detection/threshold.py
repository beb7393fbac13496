"""Threshold rules: count, sum or distinct count per entity over a sliding time window, across batches.

Semantics (exact, and what the brute-force test checks): for a counted event ``e`` of entity ``k`` at
time ``t``, the value is the aggregate over every counted event of ``k`` with time in ``(t - window, t]``
that arrived in this batch or an earlier one (events retained for ``window + late_s`` behind the latest
time seen). The state is a small Polars frame of retained events; each batch is one sort and one
``rolling`` group-by, never a loop per event.
"""

from __future__ import annotations

import io

import polars as pl

from finsecure.detection.rule import ThresholdSpec

__all__ = ["ThresholdEvaluator"]

_STATE_SCHEMA = {
    "entity": pl.String(),
    "ts": pl.Datetime("us", "UTC"),
    "num": pl.Float64(),
    "text": pl.String(),
}


class ThresholdEvaluator:
    """Per-entity sliding-window aggregate of one threshold rule, with state kept between batches.

    Parameters
    ----------
    spec
        The rule's threshold.
    condition
        Which events count (``None``: all).
    late_s
        How long after the latest event time an older event still finds its window complete.
    """

    def __init__(
        self, spec: ThresholdSpec, condition: pl.Expr | None = None, late_s: int | None = None
    ) -> None:
        self.spec = spec
        self.condition = condition
        self.late_s = spec.window_s if late_s is None else late_s
        self._state = pl.DataFrame(schema=_STATE_SCHEMA)
        self._watermark: object = None

    def _rows(self, frame: pl.DataFrame) -> pl.DataFrame:
        spec = self.spec
        keep = pl.col(spec.group_by).is_not_null()
        if self.condition is not None:
            keep = keep & self.condition
        value = pl.col(spec.field) if spec.field else pl.lit(None)
        if spec.agg == "sum":
            keep = keep & value.is_not_null()
        return (
            frame.with_row_index("row")
            .filter(keep)
            .select(
                pl.col("row"),
                pl.col(spec.group_by).cast(pl.String).alias("entity"),
                pl.col("ts").cast(pl.Datetime("us", "UTC")),
                (value.cast(pl.Float64) if spec.agg == "sum" else pl.lit(None, pl.Float64)).alias("num"),
                (value.cast(pl.String) if spec.agg == "distinct" else pl.lit(None, pl.String)).alias("text"),
            )
        )

    def evaluate(self, frame: pl.DataFrame) -> pl.Series:
        """The window aggregate for every row of ``frame`` (null where the row does not count), and
        remember the counted rows for later batches."""
        new = self._rows(frame)
        combined = pl.concat(
            [self._state.with_columns(pl.lit(None, pl.UInt32).alias("row")).select(new.columns), new]
        ).sort("entity", "ts", maintain_order=True)
        agg = {
            "count": pl.len().cast(pl.Float64),
            "sum": pl.col("num").sum(),
            "distinct": pl.col("text").drop_nulls().n_unique().cast(pl.Float64),
        }[self.spec.agg]
        rolled = combined.rolling(
            index_column="ts", period=f"{self.spec.window_s}s", group_by="entity", closed="right"
        ).agg(agg.alias("value"))
        values = combined.select("row").with_columns(rolled.get_column("value")).drop_nulls("row")
        out = pl.Series("value", [None] * frame.height, dtype=pl.Float64)
        if values.height:
            out = out.scatter(values.get_column("row").to_numpy(), values.get_column("value").to_numpy())
        if new.height:
            latest = new.get_column("ts").max()
            if self._watermark is None or (latest is not None and latest > self._watermark):  # type: ignore[operator]
                self._watermark = latest
        if self._watermark is not None:
            horizon = pl.lit(self._watermark) - pl.duration(seconds=self.spec.window_s + self.late_s)
            self._state = combined.filter(pl.col("ts") > horizon).select(list(_STATE_SCHEMA))
        return out

    def snapshot(self) -> bytes:
        """The retained events as Arrow IPC bytes."""
        buffer = io.BytesIO()
        self._state.write_ipc(buffer)
        return buffer.getvalue()

    def restore(self, data: bytes) -> None:
        """Load retained events written by :meth:`snapshot`."""
        state = pl.read_ipc(io.BytesIO(data))
        self._state = state.cast(_STATE_SCHEMA)  # type: ignore[arg-type]  # dict of dtypes is accepted
        self._watermark = state.get_column("ts").max() if state.height else None
