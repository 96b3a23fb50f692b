"""``python benchmarks/slim_wheel.py WHEEL KEEP``: drop from a wheel the native libraries built
for other CUDA / ROCm versions than ``KEEP`` (e.g. ``cuda130``). bitsandbytes ships one per
version (129 MB unpacked, 43 MB packed); the GPU machine needs one, and what travels there
is limited (the checkout and the wheels together under 64 MiB). pip installs the slimmed
wheel as it is (it does not check RECORD against the archive)."""

from __future__ import annotations

import os
import re
import sys
import zipfile

OTHER_BUILDS = re.compile(r"lib\w+_(cuda|rocm)\d+\.so$")


def slim(wheel: str, keep: str) -> None:
    staged = wheel + ".tmp"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if OTHER_BUILDS.search(item.filename) and keep not in item.filename:
                continue
            dst.writestr(item, src.read(item.filename))
    os.replace(staged, wheel)


if __name__ == "__main__":
    slim(*sys.argv[1:3])
