"""The review store as an outbox sink: one review record per attempt that ended.

After the audit sink (which set the event's audit id), every record the door machine marked as
ending an attempt (:class:`~.events.AttemptEnd`: an unlock, a refusal, a liveness failure, each
refusal during a lockout, a remote unlock with no face) is kept with its best-scoring face crop
and embedding, this door's name and the bundle and model it was decided under
(daemon/review/store.py writes it); with ``review.mqtt`` the same record, crop included, also
goes to MQTT (``P/review/<door>``). It never stops an event and never raises: a folder that
cannot take the record is the writer's warning, said once, and the door goes on deciding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import cv2
import numpy as np

from ..config.schema import ReviewConfig
from ..errors import TwinLockError
from ..review.format import (
    MAX_REASON_CHARS,
    TOKEN_RE,
    ReviewRecord,
    encode_mqtt,
    encode_record,
    new_record_id,
)
from ..review.store import ReviewWriter, encode_crop
from .events import AttemptEnd, Event, Record

logger = logging.getLogger(__name__)

#: (bundle id, model id) the door decides under now; None for what is not known
Ids = Callable[[], tuple[str | None, str | None]]
#: hands one review message (daemon/review/format.encode_mqtt) to MQTT (``review.mqtt``)
Publish = Callable[[str, bytes], None]


def _token(value: str | None) -> str | None:
    """A name the record format takes (a resident's, a bundle's), else None: a record is never
    lost to a name the reader would refuse."""
    return value if value is not None and TOKEN_RE.fullmatch(value) else None


class ReviewSink:
    """Writes each ended attempt to ``writer``; see the module docstring."""

    def __init__(self, writer: ReviewWriter, ids: Ids,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 publish: Publish | None = None) -> None:
        self.writer, self.ids, self.clock = writer, ids, clock
        #: with ``review.mqtt``: each record also goes out over MQTT, whether or not the folder
        #: could take it (the folder stays the door's own copy)
        self.publish = publish
        self._error_said = False

    @classmethod
    def from_config(cls, cfg: ReviewConfig, ids: Ids,
                    publish: Publish | None = None) -> ReviewSink:
        return cls(ReviewWriter(cfg.dir, cfg.door, cfg.retention_days,
                                max(1, int(cfg.max_mb * 1_000_000))), ids,
                   publish=publish if cfg.mqtt else None)

    def handle(self, event: Event) -> bool:
        record = event.record
        if record is None or record.attempt is None:
            return True
        try:
            self._write(event, record, record.attempt)
        except (TwinLockError, OSError, ValueError, cv2.error) as exc:  # never into the loop
            if not self._error_said:
                logger.warning("review record not kept (%s); the door keeps deciding", exc)
                self._error_said = True
        return True

    def _write(self, event: Event, record: Record, end: AttemptEnd) -> None:
        bundle_id, model_id = self.ids()
        now = self.clock()
        score = record.best_score
        if score is not None and not (np.isfinite(score) and 0.0 <= score <= 1.0):
            score = None
        reason = "".join(c if c.isprintable() else " " for c in record.reason)
        embedding = (None if end.embedding is None
                     else np.asarray(end.embedding, dtype=np.float32).reshape(-1))
        review = ReviewRecord(
            id=new_record_id(self.writer.door, now), door=self.writer.door, time=now,
            decision=end.decision, bundle_id=_token(bundle_id), model_id=_token(model_id),
            audit_id=event.audit_id, resident=_token(record.user),
            score=None if score is None else float(score), reason=reason[:MAX_REASON_CHARS],
            embedding=embedding)
        crop = encode_crop(end.crop) if end.crop is not None and embedding is not None else None
        self.writer.append(review, crop)  # False: the writer said why, once
        if self.publish is not None:
            if crop is not None:
                review = dataclasses.replace(review, crop_sha256=hashlib.sha256(crop).hexdigest())
            self.publish(review.door, encode_mqtt(encode_record(review), crop))

