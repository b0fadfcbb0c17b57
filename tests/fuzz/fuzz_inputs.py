"""libFuzzer (atheris) over the two entry points of untrusted bytes: the event parser and the
image decoder. Only ``Rejected`` (a dead letter with a reason) may escape them; any other
exception, a crash, or an input slower than ``-timeout`` seconds is a finding.

The first byte of each input picks the target (even: parser, odd: decoder), so one corpus
serves both. Pillow's Python plugins (the header parsers) and dupwatch are instrumented for
coverage; Pillow's C decoders are exercised but not instrumented.

    pip install atheris            # Linux x86_64 wheels; see pyproject's test extra
    python tests/fuzz/fuzz_inputs.py -runs=200000 -max_len=20000 -timeout=20 CORPUS_DIR

tests/fuzz/test_fuzz.py runs it for a few thousand inputs on a seed corpus it writes (one small
image per format and mode, animations, bombs, events).
"""
import sys

import atheris

with atheris.instrument_imports(include=["dupwatch", "PIL"]):
    from dupwatch.imaging.image import DecodeLimits, decode
    from dupwatch.schemas import Rejected, parse_image_event

LIMITS = DecodeLimits(max_pixels=4_000_000)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    payload = data[1:]
    try:
        if data[0] % 2:
            assert decode(payload, LIMITS).mode == "RGB"
        else:
            assert parse_image_event(payload, max_event_bytes=1 << 20,
                                     max_metadata_bytes=4096).image_id
    except Rejected as rejected:
        assert rejected.detail


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
