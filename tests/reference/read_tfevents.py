"""Reads a TensorBoard event file with tensorboard's own loader and prints it as JSON.

Used by tests/test_train_logs.cpp: python3 read_tfevents.py EVENT_FILE prints
  {"file_version": ..., "scalars": {tag: [[step, value], ...]}, "text": {tag: [[step, text], ...]},
   "records": N}
EventAccumulator is what the TensorBoard server itself runs on each file. Its record reader
checks both masked CRCs of every record and stops reading at the first bad one (it takes that
for a record still being written), so a framing mistake shows up as a short "records" count,
which the C++ test checks. Exits 2 when tensorboard is not installed.
"""
import json
import sys


def fail(message):
    print(f"read_tfevents.py ({sys.executable}): {message}", file=sys.stderr)
    sys.exit(2)


def main():
    if len(sys.argv) != 2:
        fail("usage: read_tfevents.py EVENT_FILE")
    path = sys.argv[1]
    try:
        from tensorboard.backend.event_processing import event_accumulator, event_file_loader
    except ImportError as error:
        fail(f"cannot import {error.name} ({error}); run scripts/setup.sh")

    # Every raw record, in order: the count proves nothing was skipped.
    records = sum(1 for _ in event_file_loader.RawEventFileLoader(path).Load())

    accumulator = event_accumulator.EventAccumulator(
        path, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    scalars = {tag: [[event.step, event.value] for event in accumulator.Scalars(tag)] for tag in tags["scalars"]}
    text = {}
    for tag in tags["tensors"]:
        metadata = accumulator.SummaryMetadata(tag)
        if metadata.plugin_data.plugin_name != "text":
            continue
        text[tag] = [[event.step, b"".join(event.tensor_proto.string_val).decode("utf-8")]
                     for event in accumulator.Tensors(tag)]
    json.dump({"file_version": accumulator.file_version, "scalars": scalars, "text": text, "records": records},
              sys.stdout)


if __name__ == "__main__":
    main()
