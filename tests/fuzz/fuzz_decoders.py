"""Coverage-guided fuzzing of the decoders with atheris (libFuzzer).

    python tests/fuzz/fuzz_decoders.py -runs=100000 tests/data/hl7 tests/data/fhir

Seeds are the fixture files; a crash is any exception escaping `Pipeline.process`, or a
processing_error dead letter, which means a decoder met input it did not anticipate.
"""

import sys

import atheris

with atheris.instrument_imports():
    from consumer.dead_letters import Reason
    from consumer.pipeline import Pipeline
    from interpretation import SourceRef, default_ruleset

PIPE = Pipeline(default_ruleset(), max_message_bytes=1 << 16)
HERE = SourceRef(topic="lab.results", partition=0, offset=0)


def one_input(data: bytes) -> None:
    done = PIPE.process(data, HERE)
    if done.dead_letter is not None and done.dead_letter.reason is Reason.PROCESSING_ERROR:
        raise AssertionError(f"decoder let an unexpected error through: {done.dead_letter.detail}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
