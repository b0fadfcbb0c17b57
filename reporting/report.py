"""`dupwatch report`: verdicts in, one self-contained HTML page of duplicate groups out.

A group is an image and every image that matched it, directly or through a chain of matches
(C matched B, B matched A: one group under A). Each match is shown as a pair of thumbnails,
the earlier image on the left, with its verdict, stage and score; where the verify stage decided,
a box on the earlier image marks the region the later one shows, so a moderator sees at a glance
which part was reused. Thumbnails are small JPEGs
inside the page as data: URIs, so the file can be mailed or attached to a ticket; the page
filters by verdict and stage and shows ``page_size`` groups at a time, all in the browser.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator

from confluent_kafka import KafkaException

from dupwatch.imaging.image import DecodeLimits, decode
from dupwatch.errors import UserError
from dupwatch.schemas import Rejected
from dupwatch.messaging.follow import MissingTopic, TopicReader
from dupwatch.messaging.kafka import KafkaOptions, require_broker
from dupwatch.reporting.progress import Progress, wanted
from dupwatch.imaging.files import image_files

THUMB_QUALITY = 75


@dataclass(frozen=True)
class Pair:
    """One match on the page: ``image_id`` matched the earlier ``match_id`` with this verdict,
    stage, calibrated score and the stage's distance (None where the verdict has none), and what
    the verify stage found when it decided (``evidence``: its inliers, agreement and the region of
    ``match_id`` that the image shows, which the page draws on the earlier image)."""
    image_id: str
    match_id: str
    verdict: str
    stage: str
    score: float | None
    distance: float | None
    evidence: dict[str, Any] | None = None


@dataclass
class Group:
    """A tenant's image (``root``, which matched nothing earlier) and every match that leads to it
    through a chain of matches, in the order they were decided."""
    tenant: str
    root: str
    pairs: list[Pair] = field(default_factory=list)


@dataclass
class Verdicts:
    """The verdicts read (the last one per tenant and image wins) and what was skipped."""
    by_key: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    rejected: int = 0

    def add(self, document: dict[str, Any]) -> None:
        if "verdict" in document:
            self.by_key[(document["tenant"], document["image_id"])] = document
        else:  # `scan` output and the dead-letter topic also carry rejected events
            self.rejected += 1


def read_jsonl(path: Path) -> Verdicts:
    verdicts = Verdicts()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                verdicts.add(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not a JSON line ({exc.msg}); "
                                 "expected the output of `dupwatch scan` or "
                                 "`dupwatch verdicts --format jsonl`") from None
    return verdicts


def read_topic(kafka: KafkaOptions, topic: str, idle_timeout_s: float,
               max_records: int | None) -> Verdicts:
    try:
        reader = TopicReader(kafka, [topic], from_beginning=True)
    except MissingTopic:
        raise UserError(f"{topic}: no such file, and no such topic on "
                         f"{kafka.bootstrap_servers}") from None
    except KafkaException as exc:
        raise UserError(f"cannot read topic {topic} from "
                         f"{kafka.bootstrap_servers}: {exc}") from None
    verdicts = Verdicts()
    with reader:
        for record in reader.records(max_records=max_records, idle_timeout_s=idle_timeout_s):
            verdicts.add(record.document)
    return verdicts


def duplicate_groups(verdicts: Verdicts) -> list[Group]:
    """Groups of matched images, largest first; pairs in the order they were decided (a batch
    is decided at one instant: its pairs by image id, so any reading order gives one page)."""
    parent = {key: (key[0], doc["match_id"]) for key, doc in verdicts.by_key.items()
              if doc.get("match_id")}
    groups: dict[tuple[str, str], Group] = {}
    decided = sorted(verdicts.by_key.items(), key=lambda item: (item[1]["processed_at"], item[0]))
    for key, doc in decided:
        if key not in parent:
            continue
        root = _root(key, parent)
        group = groups.setdefault(root, Group(tenant=root[0], root=root[1]))
        group.pairs.append(Pair(image_id=key[1], match_id=doc["match_id"],
                                verdict=doc["verdict"], stage=doc["stage"] or "",
                                score=doc.get("score"), distance=doc.get("distance"),
                                evidence=doc.get("evidence")))
    return sorted(groups.values(), key=lambda g: (-len(g.pairs), g.tenant, g.root))


def _root(key: tuple[str, str], parent: dict[tuple[str, str], tuple[str, str]]) -> tuple[str, str]:
    seen = {key}
    # A redelivered image can match its own later copy, so a chain may loop: stop where it does.
    while key in parent and parent[key] not in seen:
        key = parent[key]
        seen.add(key)
    return key


def thumbnails(image_ids: Iterable[str], image_paths: list[str], side: int,
               limits: DecodeLimits) -> dict[str, str | None]:
    """A JPEG data: URI per image id (None when no file has that id or it cannot be read)."""
    files = {f.image_id: f.path for f in image_files(image_paths).files}
    ids = sorted(set(image_ids))

    def thumbnail(image_id: str) -> str | None:
        path = files.get(image_id)
        return _thumbnail(path, side, limits) if path else None

    uris = {}
    with Progress(len(ids), "thumbnails", enabled=wanted()) as bar, ThreadPoolExecutor() as pool:
        # Pillow releases the GIL while decoding, so threads share the work.
        for image_id, uri in zip(ids, pool.map(thumbnail, ids), strict=True):
            uris[image_id] = uri
            bar.advance()
    return uris


def _thumbnail(path: Path, side: int, limits: DecodeLimits) -> str | None:
    try:
        image = decode(path.read_bytes(), limits)
    except (OSError, Rejected):
        return None
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMB_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render(groups: list[Group], thumbs: dict[str, str | None], verdicts: Verdicts,
           title: str, page_size: int) -> str:
    labels: dict[str, int] = {}
    for doc in verdicts.by_key.values():
        labels[doc["verdict"]] = labels.get(doc["verdict"], 0) + 1
    data = {"groups": [_group_json(g) for g in groups], "thumbs": thumbs,
            "pageSize": page_size, "verdictCounts": labels, "rejected": verdicts.rejected}
    # "<" escaped, so no string in the data (image ids are user input) can close the script.
    payload = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    template = resources.files("dupwatch.reporting").joinpath("report.html").read_text()
    # One pass, so a title or image id that reads "{{data}}" is never substituted again.
    values = {"title": html.escape(title), "data": payload}
    return re.sub(r"\{\{(title|data)\}\}", lambda m: values[m.group(1)], template)


def _group_json(group: Group) -> dict[str, Any]:
    return {"tenant": group.tenant, "root": group.root,
            "pairs": [{"id": p.image_id, "match": p.match_id, "verdict": p.verdict,
                       "stage": p.stage, "score": p.score, "distance": p.distance,
                       "evidence": p.evidence} for p in group.pairs]}


def images_in(groups: list[Group]) -> Iterator[str]:
    for group in groups:
        for pair in group.pairs:
            yield pair.image_id
            yield pair.match_id


def load_verdicts(kafka: KafkaOptions, source: str, idle_timeout_s: float,
                  max_records: int | None) -> Verdicts:
    """``source`` is a JSON-lines file when one exists at that path, else a topic name."""
    path = Path(source)
    if path.is_file():
        return read_jsonl(path)
    if path.suffix in (".json", ".jsonl", ".txt") or "/" in source:
        raise UserError(f"{source}: no such file (a topic name has no '/' or suffix)")
    require_broker(kafka)
    print(f"reading {source} from {kafka.bootstrap_servers} until {idle_timeout_s:g}s pass "
          "without a new verdict", file=sys.stderr)
    return read_topic(kafka, source, idle_timeout_s, max_records)


def write_report(kafka: KafkaOptions, max_image_pixels: int, source: str, images: list[str],
                 out: str, *, page_size: int, thumb_side: int, idle_timeout_s: float,
                 max_records: int | None) -> int:
    verdicts = load_verdicts(kafka, source, idle_timeout_s, max_records)
    groups = duplicate_groups(verdicts)
    limits = DecodeLimits(max_image_pixels, draft_min_side=thumb_side)
    thumbs = thumbnails(images_in(groups), images, thumb_side, limits)
    page = render(groups, thumbs, verdicts, f"dupwatch report: {source}", page_size)
    Path(out).write_text(page, encoding="utf-8")
    missing = sum(uri is None for uri in thumbs.values())
    print(f"wrote {out}: {len(groups)} duplicate groups, {sum(len(g.pairs) for g in groups)} "
          f"pairs from {len(verdicts.by_key)} verdicts ({len(page) / 1e6:.1f} MB)"
          + (f"; {missing} of {len(thumbs)} images not found in --images" if missing else ""),
          file=sys.stderr)
    return 0
