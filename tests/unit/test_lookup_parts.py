"""The lookup's parts without a broker: the cascade's look_up, the cascade thread's priority,
tokens. The endpoint itself, on a real worker, is tested in test_lookup.py."""
from __future__ import annotations

import io
import threading
import time

import pytest
from PIL import Image

from dupwatch.wiring.cascade import build_cascade, build_processor
from dupwatch.detectors.cascade import DESCRIBE_CHUNK
from dupwatch.schemas import Rejected, VerdictLabel
from dupwatch.settings import Settings
from dupwatch.streams.cascade_thread import CascadeThread
from dupwatch.streams.lookup_api import ApiError, LookupRequest, LookupService, TokenError, Tokens
from dupwatch.streams.lookup_batches import LookupBatches
from dupwatch.imaging.samples import in_upload_order

HASHES = ["sha256", "phash", "phash_reoriented"]
ALL = "a" * 32
SHOP_ONLY = "s" * 32


def _image(cascade, sample):
    return cascade.image(sample.file.path.read_bytes())


def test_look_up_finds_copies_and_never_indexes(samples) -> None:
    cascade = build_cascade(Settings(stages=HASHES, top_k=3))
    originals, copies = in_upload_order(samples)
    for sample in originals:
        cascade.check("shop", sample.file.image_id, _image(cascade, sample))
    sizes = cascade.store.size()
    for sample in copies:
        result = cascade.look_up("shop", _image(cascade, sample))
        if sample.expected_verdict != "unique" and result.match is not None:
            assert result.match.image_id == sample.source, sample.file.image_id
    exact = next(s for s in copies if s.transform == "exact")
    for _ in range(2):  # an indexed image's own bytes: found as itself, never as the lookup
        result = cascade.look_up("shop", _image(cascade, exact))
        assert result.label == VerdictLabel.EXACT_DUPLICATE and result.match.image_id == exact.source
    assert cascade.store.size() == sizes
    assert cascade.look_up("other", _image(cascade, exact)).label == VerdictLabel.UNIQUE
    assert len(cascade.look_up("shop", _image(cascade, exact), top_k=1).candidates) == 1


def test_lookups_together_answer_as_alone_and_the_hash_settled_ones_first(samples) -> None:
    """Lookups that share a pass (LookupBatches) each get the answer they would get alone, are
    never matched against each other, and one the hashes settle is answered before the
    others' embedding runs."""
    cascade = build_cascade(Settings(top_k=3))
    originals, copies = in_upload_order(samples)
    for sample in originals[:4]:
        cascade.check("shop", sample.file.image_id, _image(cascade, sample))
    indexed = {s.file.image_id for s in originals[:4]}
    exact = next(s for s in copies if s.transform == "exact" and s.source in indexed)
    fresh = originals[4]
    queries = [fresh, exact, fresh, *[s for s in copies if s.source in indexed][:4]]
    images = [_image(cascade, sample) for sample in queries]
    alone = [cascade.look_up("shop", _image(cascade, sample)) for sample in queries]
    answered: dict[int, tuple] = {}

    def record(number: int, result) -> None:
        answered[number] = (result, "embedding" in images[0].signals)
    cascade.look_up_batch([("shop", image, None) for image in images], record)
    assert sorted(answered) == list(range(len(queries)))
    for number, (result, _) in answered.items():
        assert (result.label, result.match and result.match.image_id) == (
            alone[number].label, alone[number].match and alone[number].match.image_id)
    assert answered[0][0].label == answered[2][0].label == VerdictLabel.UNIQUE  # not each other
    exact_answer, fresh_embedded_by_then = answered[1]
    assert exact_answer.label == VerdictLabel.EXACT_DUPLICATE and not fresh_embedded_by_then


def test_lookups_waiting_while_the_thread_is_busy_share_one_pass(samples) -> None:
    settings = Settings(stages=["sha256", "phash", "embedding"])
    processor = build_processor(settings, build_cascade(settings))
    stage = processor.cascade.stages[-1]
    passes: list[int] = []
    describe = stage.describe_batch
    stage.describe_batch = lambda images: passes.append(len(images)) or describe(images)
    thread = CascadeThread()
    batches = LookupBatches(processor, thread)
    go_on = threading.Event()
    thread.submit(go_on.wait, 10)  # a stream batch, running
    bodies = [s.file.path.read_bytes() for s in samples if s.role != "copy"][:5] + [b"junk"]
    pending = [processor.intake_lookup("shop", body, is_event=False) for body in bodies]
    for item in pending:
        item.preparing.exception(30)  # ready, as the service submits them
    futures = [batches.submit(item, "shop", None) for item in pending]
    go_on.set()
    assert [future.result(60).label for future in futures[:5]] == [VerdictLabel.UNIQUE] * 5
    with pytest.raises(Rejected):
        futures[5].result(10)
    thread.shutdown()
    assert passes == [5]  # one forward pass for the five pictures


def test_a_fault_in_a_shared_pass_fails_each_open_lookup_as_processing_failed(samples) -> None:
    """As on the stream: a bug costs the lookups it met a 500 with a reason, not a bare error."""
    settings = Settings(stages=["sha256", "phash", "embedding"])
    processor = build_processor(settings, build_cascade(settings))

    def broken(images):
        raise RuntimeError("a bug in the stage")
    processor.cascade.stages[-1].describe_batch = broken
    bodies = [s.file.path.read_bytes() for s in samples if s.role != "copy"][:2]
    pending = [processor.intake_lookup("shop", body, is_event=False) for body in bodies]
    for item in pending:
        item.preparing.exception(30)
    answers: dict[int, object] = {}
    processor.look_up_batch([(item, "shop", None) for item in pending], answers.__setitem__)
    assert sorted(answers) == [0, 1]
    assert all(isinstance(a, Rejected) and a.reason.value == "processing_failed"
               for a in answers.values())


def test_look_up_of_an_indexed_image_id_is_not_a_redelivery(samples) -> None:
    """The stream gives a re-delivered event the verdict it got then; a lookup of the same
    bytes must answer what matches them now (the image itself, byte for byte)."""
    cascade = build_cascade(Settings(stages=HASHES))
    original = samples[0]
    assert cascade.check("shop", original.file.image_id, _image(cascade, original)).match is None
    result = cascade.look_up("shop", _image(cascade, original))
    assert result.match is not None and result.match.image_id == original.file.image_id


def test_look_up_rejects_what_is_not_an_image() -> None:
    cascade = build_cascade(Settings(stages=HASHES))
    with pytest.raises(Rejected) as rejected:
        cascade.look_up("shop", cascade.image(b"not an image at all"))
    assert rejected.value.reason.value == "decode_failed"


def test_a_batch_pauses_between_its_rounds_and_its_embedding_chunks(samples) -> None:
    cascade = build_cascade(Settings(stages=["sha256", "phash", "embedding"]))
    pauses = []
    cascade.pause_point = lambda: pauses.append(time.perf_counter())
    photos = [Image.open(s.file.path) for s in samples if s.role != "copy"]
    # The photos and each turned a quarter: pictures no hash stage settles (no stage here
    # looks for turned copies), so all of them reach the embedding.
    pictures = photos + [photo.transpose(Image.Transpose.ROTATE_90) for photo in photos]
    assert len(pictures) > DESCRIBE_CHUNK
    items = [("t", str(n), cascade.image(_jpeg(picture))) for n, picture in enumerate(pictures)]
    results = cascade.check_batch(items)
    assert sum("embedding" in r.timings_ms for r in results) == len(items)
    chunks = -(-len(items) // DESCRIBE_CHUNK)
    # A pause before rounds 2 and 3, and between the embedding's chunks.
    assert len(pauses) == 2 + (chunks - 1)


def _jpeg(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


def test_urgent_jobs_go_ahead_of_waiting_ones_and_into_a_running_one_at_its_pause() -> None:
    thread = CascadeThread()
    order: list[str] = []
    started, go_on = threading.Event(), threading.Event()

    def long_batch() -> None:
        order.append("batch starts")
        started.set()
        go_on.wait(10)
        thread.run_urgent()  # a pause point of the batch
        order.append("batch ends")

    batch = thread.submit(long_batch)
    started.wait(10)
    waiting = thread.submit(order.append, "next batch")
    urgent = [thread.submit_urgent(order.append, f"lookup {n}") for n in range(2)]
    go_on.set()
    for future in [batch, waiting, *urgent]:
        future.result(10)
    thread.shutdown()
    assert order == ["batch starts", "lookup 0", "lookup 1", "batch ends", "next batch"]


def test_urgent_jobs_do_not_nest_and_run_urgent_elsewhere_does_nothing() -> None:
    thread = CascadeThread()
    order: list[str] = []

    def lookup(name: str) -> None:
        order.append(f"{name} starts")
        if name == "first":
            thread.submit_urgent(lookup, "second")
            thread.run_urgent()  # inside an urgent job: must not run the second here
        order.append(f"{name} ends")

    thread.submit_urgent(lookup, "first").result(10)
    thread.run_urgent()  # not the cascade thread: nothing
    thread.shutdown(wait=True)
    assert order == ["first starts", "first ends", "second starts", "second ends"]


def test_an_exception_reaches_the_submitter_and_the_thread_goes_on() -> None:
    thread = CascadeThread()
    with pytest.raises(ZeroDivisionError):
        thread.submit(lambda: 1 / 0).result(10)
    assert thread.submit(lambda: 2).result(10) == 2
    thread.shutdown()
    with pytest.raises(RuntimeError):
        thread.submit(lambda: 3)


def _service(tokens: list[str], **settings) -> LookupService:
    return LookupService(Settings(**settings), processor=None, thread=None, tokens=Tokens(tokens))  # type: ignore[arg-type]


def _admit(service: LookupService, authorization: str | None, tenant: str = "shop",
           content_type: str = "image/jpeg", length: int | None = 10, top_k: int | None = None) -> int:
    try:
        service.admit(LookupRequest(tenant, top_k, content_type, length), authorization)
    except ApiError as error:
        return error.status
    return 200


def test_the_endpoint_is_off_until_tokens_are_configured() -> None:
    assert _admit(_service([]), f"Bearer {ALL}") == 404


@pytest.mark.parametrize("authorization, tenant, status", [
    (None, "shop", 401), ("", "shop", 401), (ALL, "shop", 401), (f"Basic {ALL}", "shop", 401),
    (f"Bearer {ALL[:-1]}", "shop", 401), (f"Bearer {ALL}x", "shop", 401),
    (f"Bearer {ALL}", "shop", 200), (f"bearer {ALL}", "anyone", 200),
    (f"Bearer {SHOP_ONLY}", "shop", 200), (f"Bearer {SHOP_ONLY}", "shop-2", 200),
    (f"Bearer {SHOP_ONLY}", "other", 403), (f"Bearer {ALL}", "", 400),
    (f"Bearer {ALL}", "../etc", 400)])
def test_tokens_and_tenants(authorization: str | None, tenant: str, status: int) -> None:
    service = _service([ALL, f"{SHOP_ONLY}:shop|shop-2"])
    assert _admit(service, authorization, tenant) == status


def test_bodies_top_k_and_content_types_are_checked_before_the_body_is_read() -> None:
    service = _service([ALL], max_event_bytes=1000, search_k=8)
    auth = f"Bearer {ALL}"
    assert _admit(service, auth, length=1001) == 413
    assert _admit(service, auth, length=1000) == 200
    assert _admit(service, auth, length=None) == 200  # chunked: counted as it is read
    assert _admit(service, auth, top_k=9) == 400 and _admit(service, auth, top_k=-1) == 400
    assert _admit(service, auth, top_k=8) == 200
    assert _admit(service, auth, content_type="text/plain") == 415
    assert _admit(service, auth, content_type="application/json") == 200
    assert _admit(service, auth, content_type="application/octet-stream") == 200


@pytest.mark.parametrize("spec", ["s3cr3t", f"{ALL}:", f"{ALL}:bad/tenant", f"{ALL[:8]} {ALL}"])
def test_unusable_token_specifications_are_refused_without_naming_the_token(spec: str) -> None:
    with pytest.raises(TokenError) as error:
        Tokens([ALL, spec])
    assert "token #2" in str(error.value)
    assert ALL[:8] not in str(error.value) and "s3cr3t" not in str(error.value)


def test_tokens_come_from_a_file_too_and_are_never_in_the_settings_repr(tmp_path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# lookup tokens\n{SHOP_ONLY}:shop\n\n")
    settings = Settings(api_tokens=[ALL], api_tokens_file=str(path))
    tokens = Tokens.of(settings)
    assert tokens.tenants_of(f"Bearer {SHOP_ONLY}") == {"shop"}
    assert tokens.tenants_of(f"Bearer {ALL}") is None
    assert ALL not in repr(settings)
    with pytest.raises(TokenError):
        Tokens.of(Settings(api_tokens_file=str(tmp_path / "missing")))


def test_lookups_flooding_the_thread_leave_the_stream_half_of_its_time() -> None:
    """Strict priority would run every lookup before any stream batch: a stream beside
    lookups that never stop would get nothing."""
    thread = CascadeThread()
    order: list[str] = []
    gate = threading.Event()
    thread.submit(gate.wait, 10)

    def work(name: str) -> None:
        time.sleep(0.01)
        order.append(name)

    futures = [thread.submit_urgent(work, "lookup") for _ in range(20)]
    futures += [thread.submit(work, "batch") for _ in range(5)]
    gate.set()
    for future in futures:
        future.result(30)
    thread.shutdown()
    runs = "".join("L" if name == "lookup" else "B" for name in order)
    assert runs.rindex("B") < runs.rindex("L")  # the batches did not wait for every lookup
    assert max(len(run) for run in runs.split("B")[:-1]) <= 3, runs
