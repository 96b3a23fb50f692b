"""A corpus over a network: streamed shards against per-file reads, and against local HDF5.

    python -m benchmarks shards [--corpus tones|speech] [--utterances 20000] [--latency-ms 20]
                                [--workers 2] [--shard-size 200] [--root /tmp/shards-bench]
                                [--rounds 2] [--sources per-file,flac-http,wav-http,hdf5,...]

A local HTTP server on 127.0.0.1, in a process of its own, answers every request after a
fixed latency, as a network filesystem or an object store would (sending files with
sendfile, so the server's copying takes little of the measured machine's CPU). Epochs of the
training loader are timed for each source
(per-file reads: one; the others in turns, the fastest of ``rounds`` after a turn that warms
the page cache), built as training builds it (:mod:`framework.data.loader`: the run's dynamic
batching, ``--workers`` workers, raw audio, no features):

1. per-file reads through the server: each utterance one request, in the sampler's order;
2. the shards through the server (``dataset=shards`` at an ``http://`` URL), audio as FLAC
   (the default) and as WAV (``prepare shards --audio-format wav``);
3. local HDF5 audio, no server;
4. the shards from the local folder, no server.

Padding is measured on each source's batches, and the CPU time of the loader's processes
(the main one and its workers) and of the server's. The first three are the issue's
comparison (shards >= 10x per-file reads through the server, within 10% of local HDF5
without it).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import soundfile
import torch

from benchmarks.common import ROOT, child_env, compose
from framework.data.hdf5 import HDF5Dataset
from framework.data.loader import make_loader, make_sampler
from framework.data.manifest import ManifestDataset
from framework.data.shards import ShardDataset, read_bytes
from framework.prepare.corpus import pack_hdf5
from framework.prepare.shards import write_shards
from framework.trainer.meter import padding

PER_FILE = "per-file reads through the server"
SHARDS_HTTP = "shards (FLAC) through the server"
WAV_HTTP = "shards (WAV) through the server"
HDF5 = "local HDF5 audio, no server"
SHARDS_LOCAL = "local shards (FLAC), no server"
WAV_LOCAL = "local shards (WAV), no server"


class SlowServer(contextlib.AbstractContextManager):
    """An HTTP server of ``root`` on 127.0.0.1 that waits ``latency_s`` before each answer, in
    a process of its own (a remote store shares no interpreter lock with its client, and its
    CPU time is counted apart): ``url`` once entered, ``cpu_seconds()`` so far."""

    def __init__(self, root: Path, latency_s: float) -> None:
        self.root, self.latency_s = Path(root), latency_s

    def __enter__(self) -> SlowServer:
        code = f"from benchmarks.shards import serve; serve({str(self.root)!r}, {self.latency_s!r})"
        self.process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                        env=child_env())
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.process.kill()
            raise RuntimeError(f"the benchmark's HTTP server did not start (exit status {self.process.wait()})")
        return self

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()


def serve(root: str, latency_s: float) -> None:
    """Runs :class:`SlowServer`'s server in this process; prints its URL, then serves until killed."""

    class Slow(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(latency_s)
            super().do_GET()

        def copyfile(self, source, outputfile) -> None:
            # the kernel copies (sendfile): a remote store's work is not the client's, and
            # Python's copy loop took 0.4 s of CPU an epoch from the 2 cores being measured
            self.connection.sendfile(source)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Slow, directory=root))
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


@contextlib.contextmanager
def slow_server(root: Path, latency_s: float) -> Iterator[str]:
    """The URL of a :class:`SlowServer` of ``root``."""
    with SlowServer(root, latency_s) as server:
        yield server.url


class PerFileOverHTTP(ManifestDataset):
    """The manifest's audio fetched one request per utterance from ``base_url`` (the path
    under the corpus root), as a per-file corpus on a remote store is read."""

    def __init__(self, manifest: Path, root: Path, base_url: str) -> None:
        super().__init__(manifest, data_root=str(root))
        self.root, self.base_url = str(root.resolve()), base_url

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        url = f"{self.base_url}/{Path(entry.path).resolve().relative_to(self.root)}"
        with urllib.request.urlopen(url) as response:
            wav, _ = soundfile.read(io.BytesIO(response.read()), dtype="float32")
        return {"id": entry.id, "inputs": torch.from_numpy(wav), "text": entry.text}


def corpus(kind: str, root: Path, utterances: int) -> tuple[Path, Path]:
    """(training manifest, the folder its paths are under)."""
    if kind == "speech":
        speech = ROOT / "recipes" / "asr_ctc" / "speech"
        return speech / "train.json", speech
    from framework.data.synthetic import prepare_tone_corpus

    tones = prepare_tone_corpus(root / f"tones-{utterances}", {"train": utterances}, max_words=6)
    return tones / "train.json", tones


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (loader workers)."""
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def transfer_cpu(folder: Path, server: SlowServer) -> dict[str, float]:
    """CPU seconds to read every shard of ``folder`` whole in this process, once through
    ``server`` (client and server) and once from the page cache."""
    names = [s["name"] for s in json.loads((folder / "index.json").read_text())["shards"]]
    seconds = {}
    for where, base in (("server", f"{server.url}/{folder.name}"), ("page cache", str(folder))):
        start, served = cpu_seconds(), server.cpu_seconds()
        for name in names:
            read_bytes(f"{base}/{name}")
        seconds[where] = cpu_seconds() - start + server.cpu_seconds() - served
    return seconds


def epoch(dataset, workers: int, seed: int = 0) -> dict[str, float]:
    """One epoch of the training loader over ``dataset``: seconds, examples, padding, and the
    CPU seconds of the loader's processes."""
    cfg = compose(["trainer.device=cpu"])
    loader = make_loader(dataset, make_sampler(cfg.batching, dataset.lengths, seed), workers, seed)
    loader.batch_sampler.set_epoch(seed)
    held = real = examples = 0
    cpu, t0 = cpu_seconds(), time.perf_counter()
    for batch in loader:
        h, r = padding([batch])
        held, real, examples = held + h, real + r, examples + len(batch)
    seconds = time.perf_counter() - t0
    del loader  # ends its workers, whose CPU time is then counted
    return {"seconds": seconds, "examples": examples, "padding": 1 - real / held, "cpu": cpu_seconds() - cpu}


SOURCES = {"per-file": PER_FILE, "flac-http": SHARDS_HTTP, "wav-http": WAV_HTTP, "hdf5": HDF5,
           "flac-local": SHARDS_LOCAL, "wav-local": WAV_LOCAL}  # --sources names


def main(kind: str = "tones", utterances: int = 20000, latency_ms: float = 20.0, workers: int = 2,
         shard_size: int = 200, root: str = "/tmp/shards-bench", rounds: int = 2,
         only: list[str] | None = None) -> dict:
    torch.set_num_threads(1)
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    manifest, data_root = corpus(kind, base, utterances)
    name = manifest.parent.name
    shards, wav, h5 = base / f"{name}-shards", base / f"{name}-wav-shards", base / f"{name}.h5"
    for out, audio_format in ((shards, "flac"), (wav, "wav")):
        if not (out / "index.json").exists():
            write_shards(manifest, out, shard_size=shard_size, data_root=str(data_root), workers=2,
                         audio_format=audio_format)
    if not h5.exists():
        pack_hdf5(manifest, h5, data_root=str(data_root), workers=2)
    n = len(json.loads(manifest.read_text()))
    results: dict[str, dict[str, float]] = {}
    latency = latency_ms / 1000
    with SlowServer(base, 0.0) as server:
        transfer_cpu(wav, server)  # the page cache warmed
        transfer = transfer_cpu(wav, server)
    with SlowServer(base, latency) as server, SlowServer(data_root, latency) as audio_server:
        url = server.url
        chosen = {SOURCES[name] for name in only} if only else set(SOURCES.values())

        def timed(make, seed: int, serving: SlowServer = server) -> dict[str, float]:
            served = serving.cpu_seconds()
            return {**epoch(make(), workers, seed), "server cpu": serving.cpu_seconds() - served}

        if PER_FILE in chosen:  # per-file reads wait for the server, not the disk: one epoch
            results[PER_FILE] = timed(lambda: PerFileOverHTTP(manifest, data_root, audio_server.url), 0, audio_server)
        sources = {SHARDS_HTTP: lambda: ShardDataset(f"{url}/{shards.name}", sample_rate=16000),
                   WAV_HTTP: lambda: ShardDataset(f"{url}/{wav.name}", sample_rate=16000),
                   HDF5: lambda: HDF5Dataset(h5),
                   SHARDS_LOCAL: lambda: ShardDataset(str(shards), sample_rate=16000),
                   WAV_LOCAL: lambda: ShardDataset(str(wav), sample_rate=16000)}
        sources = {source: make for source, make in sources.items() if source in chosen}
        # the others in turns, the fastest of `rounds` epochs each, after a first turn that
        # warms the page cache (this machine's disk and neighbours are noisy)
        for turn in range(rounds + 1):
            for source, make in sources.items():
                r = timed(make, turn)
                if turn and (source not in results or r["seconds"] < results[source]["seconds"]):
                    results[source] = r
    hours = float(HDF5Dataset(h5).lengths.sum()) / 3600
    print(f"\n{kind} corpus: {n} utterances, {hours:.2f} h; {latency_ms:g} ms per request; {workers} loader workers; "
          f"shards of {shard_size} utterances; epochs of the training loader (dynamic batching, raw audio): per-file "
          f"one, the others the fastest of {rounds} after a warm-up turn\n")
    reference = HDF5 if HDF5 in results else next(iter(results))
    print(f"| source | epoch s | utterances/s | padding | epoch s / {reference}'s | loader CPU s | server CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for source, r in results.items():
        print(f"| {source} | {r['seconds']:.2f} | {r['examples'] / r['seconds']:.0f} | {r['padding']:.2%} | "
              f"{r['seconds'] / results[reference]['seconds']:.2f}x | {r['cpu']:.2f} | {r['server cpu']:.2f} |")
    sizes = {fmt: sum(f.stat().st_size for f in d.glob("*.tar")) / 2**20 for fmt, d in (("FLAC", shards), ("WAV", wav))}
    print(f"\nshards on disk: FLAC {sizes['FLAC']:.0f} MB, WAV {sizes['WAV']:.0f} MB; HDF5 {h5.stat().st_size / 2**20:.0f} MB")
    print(f"CPU to read the WAV shards whole once (one process, no latency): through the server {transfer['server']:.2f} s "
          f"(client and server), from the page cache {transfer['page cache']:.2f} s\n(loader CPU: the main process and "
          "its workers, an epoch; server CPU: the server's process over the same epoch)")
    return {"utterances": n, "results": results, "megabytes": sizes, "transfer_cpu": transfer}
