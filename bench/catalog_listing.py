"""How long the model picker's listing and a big pair-file import take: the two times that
were once asserted in unit tests (a unit test is never timed; its machine is anyone's).

    .venv/bin/python -m bench.catalog_listing --repeats 5

1. `catalog.list_models` over 25 GGUF files with a 32k vocabulary (Llama-2/Mistral size) and 25
   HF cache snapshots, none read before in the process (header reads are cached per process,
   so every repeat lists new copies). Goal: under a second, so the picker opens at once.
2. `store.formats.import_file` of a 10,000-line JSONL file of conversational pairs with 5 bad
   lines, into a new project. Goal: a few seconds, with a progress bar on the Data page.

Prints each repeat and the median, with the machine (`bench/common.py`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


from bench.common import machine_row
from tests.model_stores import hf_model_files, write_gguf, write_hf_repo

GiB = 2**30


def listing_seconds(work: Path) -> float:
    from dpo_engine.catalog import list_models
    from dpo_engine.catalog.sources import Locations

    folder, hf = work / "many", work / "hf"
    folder.mkdir(parents=True)
    for i in range(25):
        write_gguf(folder / f"m{i}.gguf", vocab=32_000)
    files, _ = hf_model_files()
    for i in range(25):
        write_hf_repo(hf, f"org/m{i}", files)
    start = time.perf_counter()
    cat = list_models(folders=[folder], locations=Locations(hf, None, ()), free_bytes=GiB, device="cpu",
                      include_default=False)
    seconds = time.perf_counter() - start
    assert len(cat.entries) == 50 and all(e.usable for e in cat.entries)
    return seconds


def import_seconds(work: Path) -> float:
    from dpo_engine.store.formats import import_file
    from dpo_engine.store.project import open_project

    bad = {17: b'{"prompt": "x", "chosen": "y"}', 2500: b"{not json", 7777: b'{"prompt": "x", "chosen": "same", '
           b'"rejected": "same"}', 9000: b'{"prompt": "", "chosen": "a", "rejected": "b"}', 10000: b"[]"}
    lines = []
    for n in range(1, 10_001):
        record = {"prompt": [{"role": "user", "content": f"Question {n}: why is the sky blue?"}],
                  "chosen": [{"role": "assistant", "content": f"Rayleigh scattering ({n})." * 3}],
                  "rejected": [{"role": "assistant", "content": f"Because it is ({n})."}]}
        lines.append(bad.get(n, json.dumps(record).encode()))
    work.mkdir(parents=True)
    path = work / "big.jsonl"
    path.write_bytes(b"\n".join(lines))
    with open_project(work / "big.sqlite") as project:
        start = time.perf_counter()
        report = import_file(project, path)
        seconds = time.perf_counter() - start
    assert report.added == 10_000 - len(bad), report.added
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import dpo_engine.catalog  # noqa: F401  (imports are not what the picker waits for at each opening)
    import dpo_engine.store.formats  # noqa: F401

    listing, imports = [], []
    for k in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            listing.append(listing_seconds(Path(tmp) / "list"))
            imports.append(import_seconds(Path(tmp) / "import"))
        print(f"repeat {k + 1}: listing 50 models {listing[-1]:.3f} s, importing 10,000 lines {imports[-1]:.2f} s",
              file=sys.stderr)
    print(f"Machine: {machine_row()}\n")
    print("| what | median (s) | slowest (s) | goal |\n|---|---:|---:|---|")
    print(f"| list 50 models (25 GGUF of a 32k vocabulary, 25 HF snapshots) | {statistics.median(listing):.3f} "
          f"| {max(listing):.3f} | < 1 s |")
    print(f"| import 10,000 JSONL lines, 5 bad | {statistics.median(imports):.2f} | {max(imports):.2f} | a few s |")


if __name__ == "__main__":
    main()
