"""Codec speed beside plain msgpack, measured in the same run.

    .venv/bin/python bench/codec.py

Prints encode+decode microseconds per round trip for a 30-key dict, a 30-key Hash with attributes and
a 1 MiB float64 array; the msgpack rows are the floor the codec is compared against.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import msgpack
import numpy as np

from karabo_async import Hash
from karabo_async.codec import decode, encode


def thirty_key_dict() -> dict[str, object]:
    values: list[object] = [17, 2.5, "position reached", True, None, -3]
    return {f"property{i:02d}": values[i % len(values)] for i in range(30)}


def thirty_key_hash() -> Hash:
    h = Hash()
    for key, value in thirty_key_dict().items():
        h[key] = value
        h.set_attributes(key, {"unit": "mm", "sec": 1714564800, "frac": 250000000000000000, "tid": 7})
    return h


def microseconds(round_trip: Callable[[], object]) -> float:
    timer = timeit.Timer(round_trip)
    number, _ = timer.autorange()
    best = min(timer.repeat(repeat=5, number=number))
    return best / number * 1e6


def main() -> None:
    plain = thirty_key_dict()
    h = thirty_key_hash()
    array = np.random.default_rng(0).random(128 * 1024)  # 1 MiB
    raw = array.tobytes()
    as_dicts = [h.to_dict(), {key: h.get_attributes(key) for key in h}]

    def codec_of(value: object) -> Callable[[], object]:
        return lambda: decode(encode(value))

    def msgpack_of(value: object) -> Callable[[], object]:
        return lambda: msgpack.unpackb(msgpack.packb(value))

    rows = [
        ("30-key dict", "codec", codec_of(plain), len(encode(plain))),
        ("30-key dict", "plain msgpack", msgpack_of(plain), len(msgpack.packb(plain))),
        ("30-key Hash + attributes", "codec", codec_of(h), len(encode(h))),
        ("same as dicts", "plain msgpack", msgpack_of(as_dicts), len(msgpack.packb(as_dicts))),
        ("1 MiB float64 array", "codec", codec_of(array), len(encode(array))),
        ("1 MiB raw bytes", "plain msgpack", msgpack_of(raw), len(msgpack.packb(raw))),
    ]
    print(f"{'payload':<26} {'codec':<14} {'bytes':>9} {'µs/round trip':>14}")
    for payload, codec, round_trip, size in rows:
        print(f"{payload:<26} {codec:<14} {size:>9} {microseconds(round_trip):>14.2f}")


if __name__ == "__main__":
    main()
