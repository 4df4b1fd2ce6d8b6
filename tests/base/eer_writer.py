"""A small EER (Falcon 4 Electron Event Representation) encoder for tests.

tifffile and imagecodecs can decode EER but not encode it (imagecodecs.eer_encode raises
NotImplementedError), so tests that need an EER movie with *known* electron positions write
one with this module.

Bitstream (EER compression 65001 "7-bit skip + 2+2-bit sub-pixel"; 65000 uses 8-bit skips),
read least-significant bit first:
- a skip code of `skip_bits` bits advances the pixel index by its value;
- a skip equal to the all-ones maximum (127 / 255) is a pure advance without an electron;
- any other skip is followed by 2 bits of horizontal and 2 bits of vertical sub-pixel position
  (stored XOR 2, i.e. relative to the pixel centre), marks one electron at the pixel reached,
  and then advances the index by one more pixel;
- the frame ends when the pixel index reaches width × height.

Container: a little-endian BigTIFF, one strip per raw frame, BitsPerSample 1, with the EER
acquisition-metadata XML in tag 65001 (type UNDEFINED) on the first page, which is what
tifffile looks for to treat the file as EER.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

SUBPIXELS = 4  # 2 bits per axis: the 4x super-resolution grid


def encode_eer_frame(events_yx4: np.ndarray, shape_yx: tuple[int, int], skip_bits: int = 7) -> bytes:
    """Encode one raw frame.

    events_yx4: (m, 2) int electron positions on the 4x super-resolution grid
    (row, column); at most one electron per physical pixel (as in the camera).
    shape_yx: physical size (ny, nx).  Returns the strip bytes (even length).
    """
    ny, nx = shape_yx
    ev = np.asarray(events_yx4, dtype=np.int64).reshape(-1, 2)
    py, px = ev[:, 0] // SUBPIXELS, ev[:, 1] // SUBPIXELS
    if np.any((py < 0) | (py >= ny) | (px < 0) | (px >= nx)):
        raise ValueError("electron outside the frame")
    pixel = py * nx + px
    order = np.argsort(pixel, kind="stable")
    pixel = pixel[order]
    sy, sx = ev[order, 0] % SUBPIXELS, ev[order, 1] % SUBPIXELS
    if np.any(np.diff(pixel) == 0):
        raise ValueError("two electrons in one physical pixel of one frame")
    max_skip = (1 << skip_bits) - 1
    # pixels skipped before each electron, and after the last one up to the end of the frame
    gaps = np.diff(np.concatenate([[-1], pixel])) - 1
    end_gap = ny * nx - (int(pixel[-1]) + 1 if pixel.size else 0)
    n_full = gaps // max_skip  # pure advances of max_skip without an electron
    event_code = (gaps % max_skip) | ((sx ^ 2) << skip_bits) | ((sy ^ 2) << (skip_bits + 2))
    values = np.repeat(np.stack([np.full_like(gaps, max_skip), event_code], axis=1).ravel(),
                       np.stack([n_full, np.ones_like(gaps)], axis=1).ravel())
    widths = np.repeat(np.stack([np.full_like(gaps, skip_bits), np.full_like(gaps, skip_bits + 4)],
                                axis=1).ravel(),
                       np.stack([n_full, np.ones_like(gaps)], axis=1).ravel())
    # reaching width × height exactly terminates the frame
    tail = [max_skip] * (end_gap // max_skip) + ([end_gap % max_skip] if end_gap % max_skip else [])
    tail = tail or [0]
    values = np.concatenate([values, tail]).astype(np.int64)
    widths = np.concatenate([widths, [skip_bits] * len(tail)]).astype(np.int64)
    starts = np.cumsum(widths) - widths
    total_bits = int(starts[-1] + widths[-1])
    # the decoder stops reading (skip + 4) bits before the end: pad so the final code is read
    n_bytes = (total_bits + skip_bits + 4 + 8) // 8
    n_bytes += n_bytes % 2
    bits = np.zeros(n_bytes * 8, np.uint8)
    for b in range(skip_bits + 4):
        has = widths > b
        bits[starts[has] + b] = (values[has] >> b) & 1
    return np.packbits(bits, bitorder="little").tobytes()


def _ifd_entry(code: int, dtype: int, count: int, value: bytes) -> bytes:
    return struct.pack("<HHQ", code, dtype, count) + value.ljust(8, b"\0")


def write_eer(path: str | Path, frames_events_yx4: list[np.ndarray], shape_yx: tuple[int, int],
              compression: int = 65001, metadata_xml: bytes | None = None) -> None:
    """Write raw frames (each an (m, 2) array of 4x-grid electron positions) as an EER BigTIFF."""
    skip_bits = {65000: 8, 65001: 7}[compression]
    ny, nx = shape_yx
    if metadata_xml is None:
        metadata_xml = (b'<metadata><item name="numberOfFrames">%d</item>'
                        b'<item name="sensorPixelSize.width">1.0e-10</item></metadata>'
                        % len(frames_events_yx4))
    strips = [encode_eer_frame(ev, shape_yx, skip_bits) for ev in frames_events_yx4]
    out = bytearray(b"II" + struct.pack("<HHHQ", 43, 8, 0, 0))
    meta_offset = len(out)
    out += metadata_xml + b"\0" * (len(metadata_xml) % 2)
    strip_offsets = []
    for s in strips:
        strip_offsets.append(len(out))
        out += s
    previous_next_ptr = 8  # where the header stores the first IFD offset
    for i, s in enumerate(strips):
        if len(out) % 2:
            out += b"\0"
        entries = [
            _ifd_entry(256, 4, 1, struct.pack("<I", nx)),
            _ifd_entry(257, 4, 1, struct.pack("<I", ny)),
            _ifd_entry(258, 3, 1, struct.pack("<H", 1)),
            _ifd_entry(259, 3, 1, struct.pack("<H", compression)),
            _ifd_entry(262, 3, 1, struct.pack("<H", 1)),
            _ifd_entry(273, 16, 1, struct.pack("<Q", strip_offsets[i])),
            _ifd_entry(277, 3, 1, struct.pack("<H", 1)),
            _ifd_entry(278, 4, 1, struct.pack("<I", ny)),
            _ifd_entry(279, 16, 1, struct.pack("<Q", len(s))),
        ]
        if i == 0:
            entries.append(_ifd_entry(65001, 7, len(metadata_xml), struct.pack("<Q", meta_offset)))
        ifd_offset = len(out)
        struct.pack_into("<Q", out, previous_next_ptr, ifd_offset)
        out += struct.pack("<Q", len(entries)) + b"".join(entries)
        previous_next_ptr = len(out)
        out += struct.pack("<Q", 0)
    Path(path).write_bytes(bytes(out))


def calc_random_events(rng: np.random.Generator, shape_yx: tuple[int, int], n_frames: int,
                       electrons_per_frame: int) -> list[np.ndarray]:
    """Random electron positions (4x grid), at most one per physical pixel per frame."""
    ny, nx = shape_yx
    frames = []
    for _ in range(n_frames):
        pixel = rng.choice(ny * nx, size=electrons_per_frame, replace=False)
        sub = rng.integers(0, SUBPIXELS, size=(electrons_per_frame, 2))
        frames.append(np.stack([(pixel // nx) * SUBPIXELS + sub[:, 0],
                                (pixel % nx) * SUBPIXELS + sub[:, 1]], axis=1))
    return frames


def calc_expected_counts(frames_events_yx4: list[np.ndarray], shape_yx: tuple[int, int],
                         sampling: int) -> np.ndarray:
    """Reference rendering: (n, ny*sampling, nx*sampling) uint16 counts of the same events."""
    ny, nx = shape_yx
    out = np.zeros((len(frames_events_yx4), ny * sampling, nx * sampling), np.uint16)
    for i, ev in enumerate(frames_events_yx4):
        ev = np.asarray(ev).reshape(-1, 2)
        y = ev[:, 0] * sampling // SUBPIXELS
        x = ev[:, 1] * sampling // SUBPIXELS
        np.add.at(out[i], (y, x), 1)
    return out
