"""The Kafka topic table: the single list every producer, consumer, test and manifest uses.

Message types are defined in protos/magiclens/v1/events.proto. docs/topics.md is generated
from this table (`python -m runtime.topics --markdown`).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from google.protobuf.message import Message
from magiclens.v1 import events_pb2


@dataclass(frozen=True)
class Topic:
    name: str
    key: str
    message: type[Message]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    partitions: int = 6
    accepts_json: bool = False
    # The message fields a JSON record may set (an external producer's); the message's
    # other fields in JSON make it a bad event (empty: any field). Unknown keys are ignored.
    json_fields: tuple[str, ...] = ()

    @property
    def message_type(self) -> str:
        return self.message.DESCRIPTOR.full_name


PAGES_DISCOVERED = Topic(
    "magiclens.pages.discovered.v1", "url", events_pb2.PageDiscovered,
    ("mining gRPC SubmitPages", "external producers (JSON, URL only)"), ("mining",),
    accepts_json=True, json_fields=("url",))
IMAGES_MINED = Topic(
    "magiclens.images.mined.v1", "image_id", events_pb2.ImageMined,
    ("mining",), ("triplegen (annotation)", "embedding worker"))
PAIRS_MINED = Topic(
    "magiclens.pairs.mined.v1", "page_id", events_pb2.PairsMined, ("mining",), ("triplegen",))
TRIPLES_CREATED = Topic(
    "magiclens.triples.created.v1", "triple_id", events_pb2.TripleCreated,
    ("triplegen",), ("training (auto-start trigger)",))
MODELS_PUBLISHED = Topic(
    "magiclens.models.published.v1", "model_version", events_pb2.ModelPublished,
    ("training",), ("embedding server (hot swap)", "embedding worker (re-embed)",
                    "search shards (blue/green rebuild)"), partitions=1)
EMBEDDINGS_READY = Topic(
    "magiclens.embeddings.ready.v1", "image_id", events_pb2.EmbeddingReady,
    ("embedding worker",), ("search shards",))
IMAGES_DELETED = Topic(
    "magiclens.images.deleted.v1", "image_id", events_pb2.ImageDeleted,
    ("mining gRPC DeleteContent",), ("search shards",))

ALL_TOPICS: tuple[Topic, ...] = (PAGES_DISCOVERED, IMAGES_MINED, PAIRS_MINED, TRIPLES_CREATED,
                                 MODELS_PUBLISHED, EMBEDDINGS_READY, IMAGES_DELETED)
BY_NAME = {t.name: t for t in ALL_TOPICS}


def renamed(topic: Topic, name: str) -> Topic:
    """`topic` under another name (tests and benchmarks run on private topics): the same
    key, message, JSON rule and partitions; `topic` itself when the name is its own."""
    return topic if name == topic.name else dataclasses.replace(topic, name=name)


def markdown_table() -> str:
    rows = ["| topic | key | message | producers | consumers | partitions |",
            "|---|---|---|---|---|---|"]
    for t in ALL_TOPICS:
        msg = t.message_type + (" (or JSON)" if t.accepts_json else "")
        rows.append(f"| `{t.name}` | {t.key} | `{msg}` | {', '.join(t.producers)} | "
                    f"{', '.join(t.consumers)} | {t.partitions} |")
    return "\n".join(rows) + "\n"


DOC_HEADER = """# Kafka topics

Generated from `runtime/topics.py` (`task docs:topics`). Every record carries \
CloudEvents 1.0 binary-mode headers (`ce_specversion`, `ce_id`, `ce_type`, `ce_source`, \
`content-type`), so any CloudEvents SDK reads it, and the suite's own `event-id` and \
`event-type` (the same values); see `protos/magiclens/v1/events.proto`.

"""

if __name__ == "__main__":
    sys.stdout.write((DOC_HEADER if "--doc" in sys.argv else "") + markdown_table())
